"""The detect stage: the few detection frames of several videos, one detector call for them.

Each video's detection frames are decoded by seeking to their keyframes (a few GOPs, never a
pass over the video), letterboxed in the graph, and the frames of up to `decode.batch_size`
videos go through each detection filter together. The filters' safe crops meet in one region
of interest, which the decode stage applies to every clip of the video.
"""

from __future__ import annotations

import logging
import queue
import threading

from vqf.engine.flow import END, take_batch
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.workers import call_with_deadline
from vqf.errors import ErrorType, Stage, VideoError

log = logging.getLogger(__name__)


class DetectStage:
    """VideoJobs in (`inbox`), the same jobs with `roi` and `detect_info` out (`outbox`)."""

    def __init__(self, engine, *, detectors: list, inbox: queue.Queue, outbox: queue.Queue):
        self.engine = engine
        self.detectors = detectors
        self.inbox, self.outbox = inbox, outbox
        self.batch = max(1, engine.recipe.decode.batch_size)
        self.timeout_s = engine.recipe.decode.timeout_s
        self.plane = engine.new_plane()
        self.plane.warm_up(heads=("detect",))
        self.thread = threading.Thread(target=self._loop, name="vqf-detect", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        try:
            while True:
                batch = take_batch(self.inbox, most=self.batch, wait_s=0.05)
                jobs = [j for j in batch if j is not END]
                if jobs:
                    with self.engine.stats.stage(
                        "detect", items=len(jobs), label=",".join(j.video_id for j in jobs)
                    ):
                        kept = self._detect(jobs)
                    for job in kept:
                        self.outbox.put(job)
                if len(jobs) < len(batch):
                    return
        finally:
            self.outbox.put(END)

    def _frames(self, job: VideoJob):
        plane = self.plane

        def frames():
            self.engine.entering([job], "detect")
            try:
                return plane.detect_frames(job.prepared)
            except VideoError as e:
                if job.prepared.route != "nvdec" or e.type != ErrorType.DECODE_FAILED:
                    raise
                # NVDEC refused the stream: this video goes through FFmpeg from here on
                log.warning("%s: NVDEC failed (%s); decoding on the CPU", job.video_id, e.message)
                self.engine.stats.add("fallback_nvdec_to_cpu")
                job.prepared = job.prepared.on_cpu(f"nvdec failed: {e.message}")
                return plane.detect_frames(job.prepared)

        try:
            return call_with_deadline(frames, seconds=self.timeout_s, name="vqf-detect")
        except TimeoutError:
            self.engine.stats.add("decode_timeouts")
            self.plane = self.engine.new_plane()  # the stuck thread keeps the old one
            raise VideoError(
                ErrorType.TIMEOUT,
                f"detection frames of {job.video_id} did not decode within "
                f"decode.timeout_s = {self.timeout_s:g}s",
                stage=Stage.DETECT,
                hint="raise decode.timeout_s, or check the video and the decoder",
            ) from None

    def _detect(self, jobs: list[VideoJob]) -> list[VideoJob]:
        ready = []
        stats = self.engine.stats
        for job in jobs:
            try:
                with stats.stage("detect:frames", label=job.video_id):
                    ready.append((job, self._frames(job)))
            except Exception as e:
                self._fail(job, e)
        crops: dict[int, list] = {id(job): [] for job, _ in ready}
        for det in self.detectors:
            with stats.stage(f"detect:{det.name}", items=len(ready)):
                outcomes = self._run(det, ready)
            for (job, _), result in outcomes:
                if isinstance(result, BaseException):
                    self._fail(job, result)
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

    def _fail(self, job: VideoJob, e: BaseException) -> None:
        job.release()
        self.engine.fail(job, as_video_error(e, Stage.DETECT))


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
