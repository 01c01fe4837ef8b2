"""The writer thread: takes finished records from a queue and makes them durable in the sink."""

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
    """Writes records in groups; a group is durable when `sink.write` returns. A group is
    written at `flush_rows` records, or once its first record has waited `flush_s`."""

    def __init__(self, sink: Any, *, flush_rows: int, stats: Any, flush_s: float = 1.0):
        self.sink = sink
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self.stats = stats
        self.queue: queue.Queue = queue.Queue(maxsize=4 * self.flush_rows)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="vqf-writer", daemon=True)
        self._thread.start()

    def put(self, record: dict[str, str]) -> None:
        if self.error is not None:
            raise RuntimeError(f"the writer stopped: {self.error}") from self.error
        self.queue.put(record)

    def drain(self) -> None:
        """Writes what is queued and stops the thread; the sink stays open for its owner."""
        self.queue.put(_STOP)
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing the output failed: {self.error}") from self.error

    def _loop(self) -> None:
        pending: list[dict[str, str]] = []
        stop = False
        since = 0.0
        while not stop:
            wait = max(0.0, since + self.flush_s - time.monotonic()) if pending else None
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif item is not None:
                if not pending:
                    since = time.monotonic()
                pending.append(item)
            due = time.monotonic() - since >= self.flush_s
            if pending and (stop or due or len(pending) >= self.flush_rows):
                try:
                    ids = ",".join(str(r.get("video_id", "")) for r in pending)
                    with self.stats.stage("write", items=len(pending), label=ids):
                        self.sink.write(pending)
                except BaseException as e:  # keep it for the rank to raise; rows stay unwritten
                    self.error = e
                    log.error("output write failed: %s", e)
                    return
                self.stats.add("rows_written", len(pending))
                for record in pending:
                    if json.loads(record["result_info"]).get("succeed") == "true":
                        self.stats.add("succeeded")
                pending = []
