"""The recorder: the one place that owes every input row exactly one output row.

Stages never write rows. They hand the recorder a finished video's info or a failure as data;
the recorder turns it into the output record, applies the recipe's thresholds, and queues it
for the writer. A second record for the same row is refused (a stage that woke up after its
video timed out, say), and `close` gives every row still owed an INTERNAL failure, so no row
is ever lost or written twice, whatever a stage did.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vqf.config import Recipe
from vqf.decide import decide
from vqf.embeddings import attach as attach_embeddings
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.work import WorkItem
from vqf.errors import ErrorType, Stage, VideoError
from vqf.schema import DeviceInfo, failure_record, now, success_record

log = logging.getLogger(__name__)


class Recorder:
    """Owes one row per registered work item; thread-safe."""

    def __init__(
        self, writer, *, recipe: Recipe, device: DeviceInfo, stats, device_name: str, journal=None
    ):
        self.writer = writer
        self.journal = journal
        self.recipe = recipe
        self.device = device
        self.device_name = device_name
        self.stats = stats
        self.extra: dict[str, Any] = {"recipe": recipe.name}
        self._owed: dict[int, WorkItem] = {}
        self._lock = threading.Lock()

    def owe(self, items: list[WorkItem]) -> None:
        with self._lock:
            for item in items:
                self._owed[item.index] = item

    @property
    def owed(self) -> int:
        with self._lock:
            return len(self._owed)

    def forgive(self, items: list[WorkItem]) -> None:
        """Rows this run will not judge after all (the rank is stopping): a rerun owes them."""
        with self._lock:
            for item in items:
                self._owed.pop(item.index, None)

    def forgive_all(self) -> list[WorkItem]:
        """Every row still owed, no longer owed (a stop): the rerun's; returns them."""
        with self._lock:
            left, self._owed = list(self._owed.values()), {}
        return left

    def _claim(self, item: WorkItem) -> bool:
        with self._lock:
            return self._owed.pop(item.index, None) is not None

    def succeed(self, job: VideoJob, info: dict[str, Any], *, route: str, extra=None) -> bool:
        """Records a judged video; False when its row was already recorded."""
        if not self._claim(job.item):
            return False
        # scores are always written; the recipe's thresholds add keep/reasons beside them
        fields = dict(self.extra, row=job.item.index, decode_route=route, **(extra or {}))
        fields.update(decide(info, recipe=self.recipe))
        url = fields.pop("video_oss_url", None)
        record = success_record(
            job.item.row,
            info,
            start_time=job.start_time,
            end_time=now(),
            cost_s=time.time() - job.started,
            device=self.device,
            video_oss_url=url,
            extra=fields,
        )
        attach_embeddings(record, job)
        try:
            key = self._entering_write(job.item)
        except Exception as e:  # a write-stage fault: this row records it instead
            self._owe_again(job.item)
            return self.fail(job.item, as_video_error(e, Stage.WRITE), job=job)
        if route and route != "nvdec" and self.device_name.startswith("cuda"):
            self.stats.add("fallback_cpu_decode")
        self.stats.add("video_seconds", float(job.prepared.info.duration_s))
        self._queue(record, key)
        return True

    def _queue(self, record: dict, key: str | None) -> None:
        """To the writer; the journal then knows the row is finished (a death of the process
        before it is durable is not this video's doing)."""
        if self.writer.put(record, key=key) and key is not None and self.journal is not None:
            self.journal.ready([key])

    def _entering_write(self, item: WorkItem) -> str:
        """Journals the row's write (a kill now counts against it) and runs the fault hook."""
        from vqf.engine.journal import row_key
        from vqf.engine.workers import call_with_deadline
        from vqf.faults import active_faults, fault_point

        key = row_key(index=item.index, video_id=item.video_id)
        if self.journal is not None:
            self.journal.enter(item.video_id, key, "write")
        if not active_faults():
            return key  # the hook is inert: no thread to bound it by a deadline
        limit = self.recipe.decode.timeout_s
        try:
            call_with_deadline(
                lambda: fault_point("write", item.video_id), seconds=limit, name="vqf-write"
            )
        except TimeoutError:
            self.stats.add("write_timeouts")
            raise TimeoutError(
                f"the write of {item.video_id} did not start within {limit:g}s"
            ) from None
        return key

    def _owe_again(self, item: WorkItem) -> None:
        with self._lock:
            self._owed[item.index] = item

    def fail(self, item: WorkItem, error: VideoError, *, job: VideoJob | None = None) -> bool:
        """Records a failure; False when the row was already recorded."""
        from vqf.storage.secret import redact

        if not self._claim(item):
            return False
        # any stage's message may quote a library's error text: no configured secret leaves
        error = VideoError(error.type, redact(error.message), stage=error.stage, hint=error.hint)
        self.stats.failure(item.video_id, error.type.value, error.message)
        record = failure_record(
            item.raw,
            error,
            row=item.row,
            start_time=job.start_time if job else None,
            cost_s=(time.time() - job.started) if job else 0.0,
            device=self.device,
            extra=dict(self.extra, row=item.index),
        )
        key = None
        if job is not None and error.stage != Stage.WRITE:
            try:
                key = self._entering_write(item)
            except Exception as e:  # the write stage's own fault replaces the message
                record = failure_record(
                    item.raw, as_video_error(e, Stage.WRITE), row=item.row,
                    start_time=job.start_time, device=self.device,
                    extra=dict(self.extra, row=item.index),
                )  # fmt: skip
        elif job is not None:
            from vqf.engine.journal import row_key

            key = row_key(index=item.index, video_id=item.video_id)
        self._queue(record, key)
        return True

    def close(self) -> int:
        """Gives each row still owed an INTERNAL failure; returns how many there were."""
        with self._lock:
            left = list(self._owed.values())
        for item in left:
            log.error("row %d (%s) reached the end without a result", item.index, item.video_id)
            self.fail(
                item,
                VideoError(
                    ErrorType.INTERNAL,
                    "the rank finished without a result for this row",
                    stage=Stage.WRITE,
                ),
            )
        return len(left)
