"""The prepare stage: fetch, probe and plan, `decode.workers` videos at a time.

Downloads and probes run ahead of decode, up to `decode.prefetch` prepared videos waiting in
the next stage's inbox. A fetch is not timed by the runtime (the storage tiers have deadlines
of their own); a probe running past decode.timeout_s (a stuck mount, a demuxer that never
returns) becomes a TIMEOUT row, and a fresh worker takes the stuck one's place. Once a stop
is asked for, videos not yet started are left for the rerun.
"""

from __future__ import annotations

import queue
import time

from vqf.engine.context import Context
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.runtime import Stage, Worker
from vqf.errors import ErrorType, VideoError
from vqf.errors import Stage as ErrorStage
from vqf.schema import now


class PrepareStage(Stage):
    """VideoJobs in (fresh), prepared VideoJobs out."""

    name = "prepare"
    error_stage = ErrorStage.FETCH
    timeout_counter = "probe_timeouts"

    def __init__(self, ctx: Context, *, fetcher, inbox: queue.Queue, outbox: queue.Queue):
        cfg = ctx.recipe.decode
        super().__init__(
            inbox=inbox, outbox=outbox, workers=max(1, cfg.workers), deadline_s=cfg.timeout_s
        )
        self.ctx = ctx
        self.fetcher = fetcher
        self.plane = ctx.new_plane()  # probing shares one plane: it runs no DALI graph

    def process(self, worker: Worker, items: list) -> None:
        for job in items:
            if self.ctx.stopping.is_set():
                self.ctx.recorder.forgive([job.item])  # never started: the rerun's
                continue
            self._prepare(worker, job)

    def _prepare(self, worker: Worker, job: VideoJob) -> None:
        ctx = self.ctx
        job.start_time, job.started = now(), time.time()
        ctx.journal.enter(job.video_id, job.key, "fetch")  # the fetcher runs its hook
        with worker.untimed(), ctx.stats.stage("fetch", label=job.video_id):
            job.fetched = self.fetcher.fetch(job.item.row)
        try:
            ctx.entering([job], "probe")
            with ctx.stats.stage("probe", label=job.video_id):
                job.prepared = self.plane.prepare(job.fetched.path, uri=job.fetched.uri)
        except Exception as e:
            raise as_video_error(e, ErrorStage.PROBE) from None
        if ctx.keep_prepared is not None:
            ctx.keep_prepared.append((job.item.row, job.prepared))
        if not worker.emit(job):
            job.release()

    def timeout_error(self, job: VideoJob, seconds: float) -> VideoError:
        return VideoError(
            ErrorType.TIMEOUT,
            f"probe of {job.video_id} ran past decode.timeout_s = {seconds:g}s",
            stage=ErrorStage.PROBE,
            hint="raise decode.timeout_s, or check the storage the video is read from",
        )
