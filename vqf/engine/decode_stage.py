"""The decode stage: lanes that stream each video's planned frames into clips.

A lane is a thread with a video plane of its own (DALI pipelines are not shared between
threads) and decodes one video at a time: chunk by chunk through the graph, each chunk fed
to the clip assembler and the frame filters, each complete clip handed to the model stage at
once. Several lanes keep several decoder sessions in flight (NVDEC runs one per pipeline run),
while the model stage works on earlier clips.

Chunks leave DALI's buffers straight away: the assembler copies the frames a clip needs into
torch-owned clip buffers (on the same device), so a DALI output is never referenced after the
next run and the clips can wait for the models as long as the budget allows.

A lane that makes no progress for decode.timeout_s is abandoned: its video gets a TIMEOUT row
and a fresh lane takes its place (a thread stuck in C code cannot be stopped).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from vqf.engine.assemble import ClipAssembler
from vqf.engine.flow import END
from vqf.engine.job import VideoJob, as_video_error
from vqf.errors import ErrorType, Stage, VideoError

log = logging.getLogger(__name__)


class DecodeStage:
    """`lanes` threads reading `inbox` (VideoJobs), writing ClipJobs to the model stage."""

    def __init__(self, engine, *, inbox: queue.Queue, lanes: int):
        self.engine = engine
        self.inbox = inbox
        self.size = lanes
        self._lock = threading.Lock()
        self._lanes: list[_Lane] = []
        self._running = 0
        self.replaced = 0
        self.finished = threading.Event()
        self._made = 0

        # lanes are made (and their pipelines warmed up) before any stage starts
        self._ready = [self._lane() for _ in range(lanes)]

    def start(self) -> None:
        for lane in self._ready:
            self._launch(lane)

    def _lane(self) -> _Lane:
        self._made += 1
        return _Lane(self, name=f"vqf-decode-{self._made - 1}")

    def _launch(self, lane: _Lane) -> None:
        with self._lock:
            self._lanes.append(lane)
            self._running += 1
        lane.thread.start()

    def _spawn(self) -> None:
        self._launch(self._lane())

    def lane_done(self, lane: _Lane) -> None:
        """A lane saw END: the last one to stop ends the model stage's input."""
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.engine.models.inbox.put(END)
            self.finished.set()

    def busy(self) -> int:
        with self._lock:
            return sum(1 for lane in self._lanes if lane.job is not None and not lane.abandoned)

    def watch(self, *, timeout_s: float) -> None:
        """Abandons lanes stuck past `timeout_s` without progress; their videos time out."""
        now_s = time.monotonic()
        with self._lock:
            stuck = [
                lane
                for lane in self._lanes
                if not lane.abandoned and lane.job is not None and now_s - lane.progress > timeout_s
            ]
            for lane in stuck:
                lane.abandoned = True
                self._running -= 1
        for lane in stuck:
            job = lane.job
            self.engine.stats.add("decode_timeouts")
            log.error("decode of %s made no progress for %.0f s", job.video_id, timeout_s)
            self.engine.fail(
                job,
                VideoError(
                    ErrorType.TIMEOUT,
                    f"decode of {job.video_id} made no progress for decode.timeout_s = "
                    f"{timeout_s:g}s",
                    stage=Stage.DECODE,
                    hint="raise decode.timeout_s, or check the video and the decoder",
                ),
            )
            self.replaced += 1
            self._spawn()


class _Lane:
    def __init__(self, stage: DecodeStage, *, name: str):
        self.stage = stage
        self.engine = stage.engine
        self.plane = self.engine.new_plane()
        self.plane.warm_up(heads=("clip",))
        self.job: VideoJob | None = None
        self.progress = time.monotonic()
        self.abandoned = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def alive(self) -> bool:
        return not self.abandoned

    def _loop(self) -> None:
        while not self.abandoned:
            job = self.stage.inbox.get()
            if job is END:
                self.stage.inbox.put(END)  # for the other lanes
                if not self.abandoned:
                    self.stage.lane_done(self)
                return
            self.job, self.progress = job, time.monotonic()
            try:
                self._decode(job)
            finally:
                job.release()
                self.job = None

    def _decode(self, job: VideoJob) -> None:
        try:
            self._decode_on(job, job.prepared)
        except VideoError as e:
            if job.prepared.route != "nvdec" or self.abandoned or job.closed:
                self.engine.fail(job, e)
                return
            # NVDEC refused the stream: once more on the CPU, counted where operators look
            log.warning("%s: NVDEC failed (%s); decoding on the CPU", job.video_id, e.message)
            self.engine.stats.add("fallback_nvdec_to_cpu")
            job.prepared = job.prepared.on_cpu(f"nvdec failed: {e.message}")
            try:
                self._decode_on(job, job.prepared)
            except VideoError as again:
                self.engine.fail(job, again)

    def _decode_on(self, job: VideoJob, prepared) -> None:
        """Streams `prepared` into clips; raises VideoError when the decode fails."""
        engine = self.engine
        assembler = ClipAssembler(prepared.plan, kinds=engine.models.kinds, budget=engine.budget)
        measures = engine.frame_measures(prepared)
        counter = {"decoded": 0}
        sent = 0
        try:
            engine.entering([job], "decode")
            chunks = self.plane.stream(prepared, roi=job.roi, counter=counter)
            while True:
                engine.budget.wait_room(engine.pool, alive=self._wanted(job))
                with engine.stats.stage("decode", label=job.video_id):
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    self.progress = time.monotonic()
                    if not self._wanted(job)():
                        chunks.close()
                        assembler.discard()
                        return
                    measures.add(chunk.frames)
                    pieces = assembler.add(chunk.start, chunk.frames)
                for piece in pieces:
                    sent += 1
                    if not engine.models.submit(job, piece, alive=self._wanted(job)):
                        assembler.discard()
                        return
            if assembler.pending:
                raise VideoError(
                    ErrorType.DECODE_FAILED,
                    f"{job.video_id}: {assembler.pending} clips never got all their frames",
                    stage=Stage.DECODE,
                )
            job.frame_info = measures.finish()
        except Exception as e:
            assembler.discard()
            if self.abandoned:
                return
            error = as_video_error(e, Stage.DECODE)
            if sent or error.type != ErrorType.DECODE_FAILED:
                engine.fail(job, error)  # clips already went to the models: no second try
                return
            raise error from None
        job.frames_decoded += counter["decoded"]
        engine.stats.add("frames_decoded", counter["decoded"])
        engine.stats.add("frames_spanned", int(prepared.plan.frames[-1]) + 1)
        engine.stats.add("frames_planned", len(prepared.plan.frames))
        engine.start_export(job)
        with job.lock:
            job.decoded = True
        engine.maybe_finish(job)

    def _wanted(self, job: VideoJob):
        return lambda: not self.abandoned and not job.closed
