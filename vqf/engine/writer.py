"""The writer thread: takes finished records from a queue and makes them durable in the sink.

`on_written(keys)` is told the keys given to `put` once `sink.write` returned for their
records (the crash journal's `leave_many`). A sink with a `tick()` (ODPS, whose commit window
may close by time) has it called about every second while no record arrives.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Writer:
    """Writes records in groups; a group is durable when `sink.write` returns."""

    def __init__(
        self, sink: Any, *, flush_rows: int, stats: Any, on_written=None, flush_s: float = 1.0
    ):
        self.sink = sink
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self.stats = stats
        self.on_written = on_written
        self._tick = getattr(sink, "tick", None)
        self.queue: queue.Queue = queue.Queue(maxsize=4 * self.flush_rows)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="vqf-writer", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, str], *, key: str | None = None) -> None:
        if self.error is not None:
            raise RuntimeError(f"the writer stopped: {self.error}") from self.error
        self.queue.put((record, key))

    def drain(self) -> None:
        """Writes what is queued and stops the thread; the sink stays open for its owner."""
        self.queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing the output failed: {self.error}") from self.error

    def _loop(self) -> None:
        pending: list[dict[str, str]] = []
        keys: list[str | None] = []
        stop = False
        since = 0.0
        while not stop:
            if pending:  # a group is written once its first record has waited flush_s
                idle_s = max(0.0, since + self.flush_s - time.monotonic())
            else:
                idle_s = 1.0 if self._tick is not None else None
            try:
                item = self.queue.get(timeout=idle_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif item is not None:
                if not pending:
                    since = time.monotonic()
                pending.append(item[0])
                keys.append(item[1])
            due = bool(pending) and time.monotonic() - since >= self.flush_s
            try:
                if pending and (stop or due or len(pending) >= self.flush_rows):
                    self._write(pending, keys)
                    pending, keys = [], []
                elif item is None and self._tick is not None:
                    self._tick()
            except BaseException as e:  # keep it for the rank to raise; rows stay unwritten
                self.error = e
                log.error("output write failed: %s", e)
                return

    def _write(self, pending: list[dict[str, str]], keys: list[str | None]) -> None:
        ids = ",".join(str(r.get("video_id", "")) for r in pending)
        with self.stats.stage("write", items=len(pending), label=ids):
            self.sink.write(pending)
        self.stats.add("rows_written", len(pending))
        for record in pending:
            if json.loads(record["result_info"]).get("succeed") == "true":
                self.stats.add("succeeded")
        if self.on_written is not None:
            self.on_written(keys)
