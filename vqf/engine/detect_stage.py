"""The detect stage: the few detection frames of several videos, one detector call for them.

Each video's detection frames are decoded by seeking to their keyframes (a few GOPs, never a
pass over the video), letterboxed in the graph. Several workers decode detection frames at
once (`decode.detect_workers`, each with a video plane of its own); the frames of up to
`decode.batch_size` videos go through each detection filter together, one detector call at a
time. The filters' safe crops meet in one region of interest, which the decode stage applies
to every clip of the video.
"""

from __future__ import annotations

import logging
import queue
import threading

from vqf.engine.context import Context
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.runtime import Stage, Worker
from vqf.errors import ErrorType, VideoError
from vqf.errors import Stage as ErrorStage

log = logging.getLogger(__name__)


class DetectStage(Stage):
    """VideoJobs in, the same jobs with `roi` and `detect_info` out."""

    name = "detect"
    error_stage = ErrorStage.DETECT
    timeout_counter = "decode_timeouts"
    batch_wait_s = 0.05

    def __init__(self, ctx: Context, *, detectors: list, inbox: queue.Queue, outbox: queue.Queue):
        d = ctx.recipe.decode
        workers = d.detect_workers or (4 if ctx.pool == "device" else 2)
        super().__init__(inbox=inbox, outbox=outbox, workers=workers, deadline_s=d.timeout_s)
        self.ctx = ctx
        self.detectors = detectors
        self.batch = max(1, d.batch_size)
        self._detector = threading.Lock()  # one detector call at a time: the models are shared

    def setup(self, worker: Worker) -> None:
        plane = self.ctx.new_plane()
        plane.warm_up(heads=("detect",))
        worker.state["plane"] = plane

    def process(self, worker: Worker, jobs: list[VideoJob]) -> None:
        stats = self.ctx.stats
        ready = []
        for job in list(jobs):
            worker.hold([job])
            try:
                with stats.stage("detect:frames", label=job.video_id):
                    ready.append((job, self._frames(worker, job)))
            except Exception as e:
                self.ctx.fail(job, as_video_error(e, ErrorStage.DETECT))
            worker.carried.remove(job)
        worker.hold([job for job, _ in ready])
        lock = self._detector
        with worker.untimed():
            lock.acquire()
        worker.state["lock"] = lock
        try:
            with stats.stage("detect", items=len(ready), label=_ids(ready)):
                kept = self._detect(ready)
        finally:
            worker.state.pop("lock", None)
            lock.release()
        for job in kept:
            worker.emit(job)

    def _frames(self, worker: Worker, job: VideoJob):
        plane = worker.state["plane"]
        self.ctx.entering([job], "detect")
        try:
            frames = plane.detect_frames(job.prepared)
        except VideoError as e:
            if job.prepared.route != "nvdec" or e.type != ErrorType.DECODE_FAILED:
                raise
            # NVDEC refused the stream: this video goes through FFmpeg from here on
            log.warning("%s: NVDEC failed (%s); decoding on the CPU", job.video_id, e.message)
            self.ctx.stats.add("fallback_nvdec_to_cpu")
            job.prepared = job.prepared.on_cpu(f"nvdec failed: {e.message}")
            frames = plane.detect_frames(job.prepared)
        if getattr(frames, "fell_back", False):
            self.ctx.stats.add("detect_seek_fallbacks")
        return frames

    def _detect(self, ready: list) -> list[VideoJob]:
        stats = self.ctx.stats
        crops: dict[int, list] = {id(job): [] for job, _ in ready}
        for det in self.detectors:
            with stats.stage(f"detect:{det.name}", items=len(ready)):
                outcomes = self._run(det, ready)
            for (job, _), result in outcomes:
                if isinstance(result, BaseException):
                    self.ctx.fail(job, as_video_error(result, ErrorStage.DETECT))
                    continue
                job.detect_info.update(result.info)
                if result.crop is not None:
                    crops[id(job)].append(result.crop)
            ready = [(j, f) for j, f in ready if not j.closed]
        for job, frames in ready:
            job.roi = merge_crops(crops[id(job)])
            job.frames_decoded += frames.decoded
        return [job for job, _ in ready]

    def _run(self, det, ready):
        """(video, result or exception) for one detection filter; a failing call is retried
        video by video so one bad video costs no other its result."""
        if not ready:
            return []
        try:
            results = det.detect_decoded([f for _, f in ready])
            return list(zip(ready, results, strict=True))
        except Exception as e:
            if len(ready) == 1:
                return [(ready[0], e)]
        out = []
        for one in ready:
            out += self._run(det, [one])
        return out

    def taken_over(self, worker: Worker) -> None:
        if worker.state.get("lock") is self._detector:  # stuck inside a detector call
            self._detector = threading.Lock()

    def timeout_error(self, job: VideoJob, seconds: float) -> VideoError:
        return VideoError(
            ErrorType.TIMEOUT,
            f"detection frames of {job.video_id} did not decode within "
            f"decode.timeout_s = {seconds:g}s",
            stage=ErrorStage.DETECT,
            hint="raise decode.timeout_s, or check the video and the decoder",
        )


def _ids(ready: list) -> str:
    return ",".join(job.video_id for job, _ in ready)


def merge_crops(crops: list[tuple[float, float, float, float]]):
    """The region every detection filter agrees is safe: the intersection of their crops."""
    if not crops:
        return None
    from vqf.video import Roi

    x0, y0 = max(c[0] for c in crops), max(c[1] for c in crops)
    x1, y1 = min(c[2] for c in crops), min(c[3] for c in crops)
    if x1 - x0 < 0.05 or y1 - y0 < 0.05:  # the crops disagree: keep the whole frame
        return None
    return Roi(x0=x0, y0=y0, x1=x1, y1=y1)
