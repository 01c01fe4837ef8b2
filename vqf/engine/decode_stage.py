"""The decode stage: lanes that stream each video's planned frames into clips.

A lane is a worker with a video plane of its own (DALI pipelines are not shared between
threads) and decodes one video at a time: chunk by chunk through the graph, each chunk fed
to the clip assembler and the frame filters, each complete clip handed to the model stage at
once. Several lanes keep several decoder sessions in flight (NVDEC runs one per pipeline run),
while the model stage works on earlier clips.

Chunks leave DALI's buffers straight away: the assembler copies the frames a clip needs into
clip buffers of their own (on the same device), and the lane waits for those copies before
the pipeline runs again, so a DALI output is never reused while a copy from it is queued.

Waiting for room in the byte budget or in the model stage's inbox is not work: only time
spent decoding counts against decode.timeout_s. A lane stuck past it is taken over by the
runtime: its video gets a TIMEOUT row and a fresh lane takes its place.
"""

from __future__ import annotations

import logging
import queue

from vqf.engine.assemble import ClipAssembler
from vqf.engine.context import Context
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.memory import trim_heap
from vqf.engine.runtime import Stage, Worker
from vqf.errors import ErrorType, VideoError
from vqf.errors import Stage as ErrorStage

log = logging.getLogger(__name__)


class DecodeStage(Stage):
    """`lanes` workers reading prepared VideoJobs; clips go to `submit` (the model stage)."""

    name = "decode"
    error_stage = ErrorStage.DECODE
    timeout_counter = "decode_timeouts"

    def __init__(self, ctx: Context, *, inbox: queue.Queue, outbox: queue.Queue, models,
                 lanes: int):  # fmt: skip
        super().__init__(
            inbox=inbox, outbox=outbox, workers=lanes, deadline_s=ctx.recipe.decode.timeout_s
        )
        self.ctx = ctx
        self.models = models  # submit(job, piece, alive=) and the clip kinds it reads

    def setup(self, worker: Worker) -> None:
        plane = self.ctx.new_plane()
        plane.warm_up(heads=("clip",))
        worker.state["plane"] = plane

    def process(self, worker: Worker, items: list) -> None:
        for job in items:
            try:
                self._decode(worker, job)
            finally:
                job.release()

    def _decode(self, worker: Worker, job: VideoJob) -> None:
        try:
            self._decode_on(worker, job, job.prepared)
        except VideoError as e:
            if job.prepared.route != "nvdec" or not worker.alive() or job.closed:
                raise
            # NVDEC refused the stream: once more on the CPU, counted where operators look
            log.warning("%s: NVDEC failed (%s); decoding on the CPU", job.video_id, e.message)
            self.ctx.stats.add("fallback_nvdec_to_cpu")
            job.prepared = job.prepared.on_cpu(f"nvdec failed: {e.message}")
            self._decode_on(worker, job, job.prepared)

    def _decode_on(self, worker: Worker, job: VideoJob, prepared) -> None:
        """Streams `prepared` into clips; raises VideoError when the decode fails."""
        ctx, budget = self.ctx, self.ctx.budget
        assembler = ClipAssembler(prepared.plan, kinds=self.models.kinds, budget=budget)
        measures = ctx.frame_measures(prepared)
        counter = {"decoded": 0}
        sent = 0

        def wanted() -> bool:
            return worker.alive() and not job.closed

        try:
            ctx.entering([job], "decode")
            chunks = worker.state["plane"].stream(prepared, roi=job.roi, counter=counter)
            while True:
                with worker.untimed():
                    budget.wait_room(ctx.pool, alive=wanted)
                with ctx.stats.stage("decode", label=job.video_id):
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    worker.progress()
                    if not wanted():
                        chunks.close()
                        assembler.discard()
                        return
                    measures.add(chunk.frames)
                    pieces = assembler.add(chunk.start, chunk.frames)
                    assembler.settle(chunk.frames)
                    trim_heap()  # a long video's churn must not grow the heap
                for piece in pieces:
                    sent += 1
                    with worker.untimed():
                        if not self.models.submit(job, piece, alive=wanted):
                            assembler.discard()
                            return
            if assembler.pending:
                raise VideoError(
                    ErrorType.DECODE_FAILED,
                    f"{job.video_id}: {assembler.pending} clips never got all their frames",
                    stage=ErrorStage.DECODE,
                )
            job.frame_info = measures.finish()
        except Exception as e:
            assembler.discard()
            if not worker.alive():
                return
            error = as_video_error(e, ErrorStage.DECODE)
            if sent or error.type != ErrorType.DECODE_FAILED:
                ctx.fail(job, error)  # clips already went to the models: no second try
                return
            raise error from None
        job.frames_decoded += counter["decoded"]
        ctx.stats.add("frames_decoded", counter["decoded"])
        ctx.stats.add("frames_spanned", int(prepared.plan.frames[-1]) + 1)
        ctx.stats.add("frames_planned", len(prepared.plan.frames))
        ctx.start_export(job)
        with job.lock:
            job.decoded = True
        ctx.maybe_finish(job)
