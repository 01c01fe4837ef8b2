"""The writer thread: takes finished records from a queue and makes them durable in the sink."""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Writer:
    """Writes records in groups; a group is durable when `sink.write` returns."""

    def __init__(self, sink: Any, *, flush_rows: int, stats: Any):
        self.sink = sink
        self.flush_rows = max(1, flush_rows)
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
        while not stop:
            try:
                item = self.queue.get(timeout=0.5 if pending else None)
            except queue.Empty:
                item = None
            if item is _STOP:
                stop = True
            elif item is not None:
                pending.append(item)
            if pending and (stop or item is None or len(pending) >= self.flush_rows):
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
