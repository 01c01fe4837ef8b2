"""The writer: a stage that takes finished records and makes them durable in the sink.

Records are written in groups of up to `flush_rows`, a group as soon as its first record has
waited `flush_s`. `on_written(keys)` is told the keys given to `put` once `sink.write`
returned for their records (the crash journal's `leave_many`). A sink with a `tick()` (ODPS,
whose commit window may close by time) has it called about every second while no record
arrives. The writer is the one fatal stage: a sink that cannot write (a full disk, a lost
table) stops the rank, which says so in one line; rows not yet durable are the rerun's.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

from vqf.engine.flow import END, put
from vqf.engine.runtime import Stage, Worker
from vqf.errors import Stage as ErrorStage

log = logging.getLogger(__name__)
_FLUSH = (None, None)  # `sync`'s marker: write the group now, however young


class Writer(Stage):
    """Writes records in groups; a group is durable when `sink.write` returns."""

    name = "write"
    error_stage = ErrorStage.WRITE
    fatal = True  # the output is gone: stop the rank rather than lose rows quietly

    def __init__(
        self, sink: Any, *, flush_rows: int, stats: Any, on_written=None, flush_s: float = 1.0
    ):
        flush_rows = max(1, flush_rows)
        super().__init__(inbox=queue.Queue(maxsize=max(1024, 4 * flush_rows)), outbox=None)
        self.sink = sink
        self.batch, self.batch_wait_s = flush_rows, flush_s
        self.stats = stats
        self.on_written = on_written
        self._tick = getattr(sink, "tick", None)
        self.idle_s = 1.0 if self._tick is not None else None
        self.queue = self.inbox  # its depth, for the dashboard
        self.dead = threading.Event()  # set by the rank when the run stops writing
        self._counts = threading.Condition()
        self._put = 0
        self._written = 0

    def setup(self, worker: Worker) -> None:
        self.dead = worker.runtime.aborted  # a failed write stops every put at once

    def jobs_of(self, item) -> list:
        return []  # a record's video is finished: a failing write is the output's failure

    def put(self, record: dict[str, str], *, key: str | None = None) -> bool:
        """Queues a record; False when the writer has stopped (the rank is ending)."""
        if self.dead.is_set():
            return False
        with self._counts:
            self._put += 1
        while not self.dead.is_set():
            try:
                self.inbox.put((record, key), timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def ends_batch(self, item) -> bool:
        return item is _FLUSH

    def sync(self) -> bool:
        """Writes every record put so far now and waits until they are durable; False if the
        writer stopped."""
        put(self.inbox, _FLUSH, alive=lambda: not self.dead.is_set())
        with self._counts:
            want = self._put
            while self._written < want and not self.dead.is_set():
                self._counts.wait(0.2)
            return self._written >= want

    def drain(self, runtime) -> None:
        """Writes what is queued, then ends; the sink stays open for its owner."""
        if not runtime.aborted.is_set():
            put(self.inbox, END, alive=lambda: not runtime.aborted.is_set())
            runtime.wait(self)
        self.dead.set()

    def process(self, worker: Worker, items: list) -> None:
        from vqf.faults import fault_point

        items = [item for item in items if item is not _FLUSH]
        if not items:
            return
        records = [record for record, _ in items]
        ids = ",".join(str(r.get("video_id", "")) for r in records)
        for record in records:
            fault_point("sink", str(record.get("video_id", "")))
        with self.stats.stage("write", items=len(records), label=ids):
            self.sink.write(records)
        self.stats.add("rows_written", len(records))
        for record in records:
            if json.loads(record["result_info"]).get("succeed") == "true":
                self.stats.add("succeeded")
        if self.on_written is not None:
            self.on_written([key for _, key in items])
        with self._counts:
            self._written += len(items)
            self._counts.notify_all()

    def idle(self, worker: Worker) -> None:
        self._tick()
