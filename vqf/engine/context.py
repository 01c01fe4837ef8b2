"""What the stages of a rank may use: the narrow view they get instead of the rank itself.

The recipe, the device and its memory pool, stats, the byte budget, the crash journal and
the ways a video leaves the rank: `fail` (its failure row) and `maybe_finish` (its row once
decode is over and every clip has been through the models), both through the recorder, the
one owner of output rows.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from vqf.config import Recipe
from vqf.engine.flow import Budget
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.runtime import untimed
from vqf.errors import Stage, VideoError

log = logging.getLogger(__name__)


class Context:
    """Shared by every stage of one rank; safe to use from any stage thread."""

    def __init__(self, recipe: Recipe, *, device: str, stats, budget: Budget, recorder, journal):
        self.recipe = recipe
        self.device = device
        self.pool = "device" if device.startswith("cuda") else "host"
        self.stats = stats
        self.budget = budget
        self.recorder = recorder
        self.journal = journal
        self.stopping = threading.Event()  # a stop was asked for: take no new video
        self.frame_filters: list = []
        self.aggregate = None  # the model stage's aggregate(job) -> info, set when it exists
        self.exports = None  # the cropped-video export pool, when the recipe asks for one
        self.keep_prepared: list | None = None  # (row, Prepared) of each video, when a list

    # -- a video's way through ----------------------------------------------------------------
    def entering(self, jobs, stage: str) -> None:
        """Journals that `jobs` enter `stage` (a crash now counts against them), then runs the
        fault hook (VQF_FAULT) for each; an injected fault raises here."""
        from vqf.faults import fault_point

        jobs = list(jobs)
        self.journal.enter_many([(j.video_id, j.key) for j in jobs], stage)
        for job in jobs:
            fault_point(stage, job.video_id)

    def fail(self, job: VideoJob, error: VideoError) -> None:
        """A stage's failure of one video: its row, once; the other stages drop the video."""
        with job.lock:
            if job.closed:
                return
            job.closed = True
        job.release()
        with untimed():  # handing a row to the writer is not the stage's work
            self.recorder.fail(job.item, error, job=job)

    def maybe_finish(self, job: VideoJob) -> None:
        """Records a video once decode is over and every clip has been through the models."""
        with job.lock:
            if job.closed or not job.decoded or job.clips_out:
                return
            job.closed = True
        with untimed():  # recording is not the calling stage's work
            self._record(job)

    def _record(self, job: VideoJob) -> None:
        try:
            info = self.aggregate(job) if self.aggregate is not None else {}
            info.update(job.frame_info)
            info.update(job.detect_info)
        except Exception as e:
            self.recorder.fail(job.item, as_video_error(e, Stage.AGGREGATE), job=job)
            return
        extra = {
            "frames_decoded": job.frames_decoded,
            "frames_planned": len(job.prepared.plan.frames),
        }
        if job.export is None:
            self.recorder.succeed(job, info, route=job.prepared.route, extra=extra)
            return
        # the row waits for its export on the export pool's thread, never on a stage's
        job.export.add_done_callback(
            lambda fut: self._record_export(job, info, extra, fut.result())
        )

    def start_export(self, job: VideoJob) -> None:
        """Queues the cropped copy when a safe crop was applied (before the file is released)."""
        crop = job.detect_info.get("abnormal_region_crop")
        if self.exports is None or job.roi is None or not crop or job.fetched is None:
            return
        roi, info = job.roi, job.prepared.info
        width, height = info.display_width, info.display_height
        box = (
            round(roi.x0 * width), round(roi.y0 * height),
            round(roi.x1 * width), round(roi.y1 * height),
        )  # fmt: skip
        job.export = self.exports.submit(
            job.fetched.path, video_id=job.video_id, crop=box, rotation=info.rotation
        )

    def _record_export(self, job: VideoJob, info: dict, extra: dict, result: dict) -> None:
        if "error" in result:
            info["abnormal_region_export"] = {"error": result["error"]}
        else:
            info["abnormal_region_export"] = {
                k: result[k] for k in ("url", "width", "height", "frames") if k in result
            }
            extra = dict(extra, video_oss_url=result["url"])
        self.recorder.succeed(job, info, route=job.prepared.route, extra=extra)

    # -- what stages make for themselves ------------------------------------------------------
    def new_plane(self):
        """A video plane of one's own (a stage worker's DALI pipelines); its plans carry the
        dense grid only when an enabled filter reads it."""
        from vqf.video import VideoPlane

        return VideoPlane(recipe=self.recipe, device=self.device)

    def frame_measures(self, prepared) -> Any:
        from vqf.filters.frames import FrameMeasures

        return FrameMeasures(
            self.frame_filters,
            plan=prepared.plan,
            info=prepared.info,
            sampling=self.recipe.sampling,
        )
