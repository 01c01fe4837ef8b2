"""The model stage: clips of many videos batched into each backbone call, shared by filters.

Filters that name the same backbone share one forward pass per clip: a clip enters once per
backbone whose filters read its kind, and the tokens go to each of those filters' heads.
Clips wait in per-(backbone, length) batches; a batch runs when it is full
(`models.<name>.batch_size`), or when no clip has arrived for a moment, or at the end.
Out-of-memory splits a batch in halves down to single clips; any other model error is
retried video by video, so one bad video never costs another its result.

On a GPU the stage's worker runs on a CUDA stream of its own (the runtime gives it one) and
waits on each clip's ready event, so the decode lanes' copies and the backbones overlap. A
batch running past decode.timeout_s (a hung kernel, a stuck driver call) is taken over by the
runtime: its videos get TIMEOUT rows, and a fresh worker goes on with the waiting batches
(also after the end marker: the pending batches live on the stage, not on the worker).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vqf.embeddings import Embeddings
from vqf.engine.assemble import ClipPiece
from vqf.engine.flow import put
from vqf.engine.runtime import Stage, Worker
from vqf.errors import ErrorType, VideoError
from vqf.errors import Stage as ErrorStage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClipJob:
    """One clip of one video on its way through one backbone (`reverse`: read backwards)."""

    job: Any  # vqf.engine.job.VideoJob
    piece: ClipPiece
    clip: Any  # vqf.video.plan.Clip
    reverse: bool
    model: str


class ModelStage(Stage):
    """One worker; `submit` from the decode lanes, the inbox ends with END."""

    name = "models"
    error_stage = ErrorStage.MODEL
    timeout_counter = "model_timeouts"
    batch = 64  # clips taken from the inbox at once (whatever is there), sorted into batches

    def __init__(self, ctx, *, filters: list, bank: Any, batch_sizes: dict[str, int], depth: int):
        from vqf.filters.base import ClipResult

        super().__init__(
            inbox=queue.Queue(maxsize=max(1, depth)), outbox=None, workers=1,
            deadline_s=ctx.recipe.decode.timeout_s,
        )  # fmt: skip
        self._clip_result = ClipResult
        self.ctx = ctx
        self.stats = ctx.stats
        self.filters = filters
        self.bank = bank
        self.batch_sizes = batch_sizes
        self.by_model: dict[str, list] = defaultdict(list)
        for f in filters:
            self.by_model[f.model_name].append(f)
        self.kinds = {k for f in filters for k in f.reads}
        self.idle_s = 0.05  # nothing arrived for this long: run the fullest batch
        self.pending: dict[tuple[str, int], list[ClipJob]] = defaultdict(list)
        self._pending_lock = threading.Lock()
        self.embeddings = Embeddings.of(ctx.recipe)  # None unless sinks.embeddings.enable

    # -- input, from the decode lanes ---------------------------------------------------------
    def models_for(self, kind: str) -> list[str]:
        return [m for m, fs in self.by_model.items() if any(kind in f.reads for f in fs)]

    def submit(self, job, piece: ClipPiece, *, alive) -> bool:
        """Queues a complete clip for every backbone that reads it; False if the video ended."""
        passes = [
            (clip, reverse, model)
            for clip, reverse in piece.clips
            for model in self.models_for(clip.kind)
        ]
        piece.hand_over(len(passes))
        with job.lock:
            job.clips_out += len(passes)
        for sent, (clip, reverse, model) in enumerate(passes):
            if not put(self.inbox, ClipJob(job, piece, clip, reverse, model), alive=alive):
                unsent = len(passes) - sent
                with job.lock:
                    job.clips_out -= unsent
                piece.done(unsent)
                return False
        return True

    # -- the work function --------------------------------------------------------------------
    def jobs_of(self, item: ClipJob) -> list:
        return [item.job]

    def process(self, worker: Worker, items: list[ClipJob]) -> None:
        # every clip goes into the stage's batches first, and full batches are taken one at
        # a time: a worker taken over in a batch leaves the rest to its successor
        with self._pending_lock:
            for item in items:
                self.pending[(item.model, int(item.piece.tensor.shape[0]))].append(item)
            worker.carried = []
        while worker.alive():
            with self._pending_lock:
                batch = self._take_full()
            if batch is None:
                return
            self._run(worker, batch)

    def _take(self, key) -> list[ClipJob]:
        """At most one batch of `key`'s pending clips (the caller holds the lock)."""
        waiting = self.pending.pop(key)
        size = self.batch_sizes.get(key[0], 8)
        if len(waiting) > size:
            self.pending[key] = waiting[size:]
        return waiting[:size]

    def _take_full(self) -> list[ClipJob] | None:
        """One full batch (at most the backbone's batch size) out of the pending clips."""
        for key, waiting in self.pending.items():
            size = self.batch_sizes.get(key[0], 8)
            if len(waiting) >= size:
                batch, rest = waiting[:size], waiting[size:]
                if rest:
                    self.pending[key] = rest
                else:
                    del self.pending[key]
                return batch
        return None

    def idle(self, worker: Worker) -> None:
        with self._pending_lock:
            if not self.pending:
                return
            key = max(self.pending, key=lambda k: len(self.pending[k]))
            batch = self._take(key)
        self._run(worker, batch)

    def finish(self, worker: Worker) -> None:
        while worker.alive():
            with self._pending_lock:
                if not self.pending:
                    return
                batch = self._take(next(iter(self.pending)))
            self._run(worker, batch)

    def _run(self, worker: Worker, batch: list[ClipJob]) -> None:
        worker.state["batch"] = batch
        worker.hold(c.job for c in batch)
        try:
            live = [c for c in batch if not c.job.closed]
            label = ",".join(sorted({c.job.video_id for c in live}))
            if live:
                with self.stats.stage("model", items=len(live), label=label):
                    self._run_chunk(live[0].model, live)
        finally:
            if worker.alive():  # else the take-over settled this batch
                worker.state.pop("batch", None)
                worker.held = []
                for c in batch:
                    self._done(c)

    def taken_over(self, worker: Worker) -> None:
        for c in worker.state.pop("batch", []):
            self._done(c)

    def timeout_error(self, job, seconds: float) -> VideoError:
        return VideoError(
            ErrorType.TIMEOUT,
            f"the model stage made no progress on {job.video_id} for "
            f"decode.timeout_s = {seconds:g}s",
            stage=ErrorStage.MODEL,
            hint="raise decode.timeout_s, or check the GPU and its driver",
        )

    def _done(self, c: ClipJob) -> None:
        c.piece.done()
        with c.job.lock:
            c.job.clips_out -= 1
        self.ctx.maybe_finish(c.job)

    # -- forward passes with OOM splitting and per-video isolation ----------------------------
    def _run_chunk(self, model_name: str, chunk: list[ClipJob]) -> None:
        chunk = [c for c in chunk if not c.job.closed]
        if not chunk:
            return
        import torch

        try:
            self._forward(model_name, chunk)
        except torch.OutOfMemoryError:
            self._count("oom_splits")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(chunk) == 1:
                self.ctx.fail(
                    chunk[0].job,
                    VideoError(
                        ErrorType.OUT_OF_MEMORY,
                        f"{model_name}: out of memory on a single clip",
                        stage=ErrorStage.MODEL,
                        hint="lower the clip size or use a GPU with more memory",
                    ),
                )
                return
            half = len(chunk) // 2
            self._run_chunk(model_name, chunk[:half])
            self._run_chunk(model_name, chunk[half:])
        except Exception as e:
            videos = list({id(c.job): c.job for c in chunk}.values())
            if len(videos) == 1:
                log.warning("model %s failed on %s: %s", model_name, videos[0].video_id, e)
                self.ctx.fail(
                    videos[0],
                    VideoError(
                        ErrorType.MODEL_FAILED,
                        f"{model_name}: {type(e).__name__}: {e}",
                        stage=ErrorStage.MODEL,
                    ),
                )
                return
            for job in videos:  # isolate the video that breaks the batch
                self._run_chunk(model_name, [c for c in chunk if c.job is job])

    def _clips(self, chunk: list[ClipJob]):
        """The batch's input (N, T, 3, H, W), and for each row its (job, clip) pairs."""
        import torch

        rows, owners = [], []
        for c in chunk:
            tensor = c.piece.tensor
            if c.piece.ready is not None:
                c.piece.wait_on(torch.cuda.current_stream(tensor.device))
            rows.append(tensor.flip(0) if c.reverse else tensor)
            owners.append((c.job, c.clip))
        return torch.stack(rows), owners

    def _forward(self, model_name: str, chunk: list[ClipJob]) -> None:
        import torch

        self.ctx.entering({id(c.job): c.job for c in chunk}.values(), "model")
        backbone = self.bank.backbone(model_name)
        # the runtime runs this worker on a CUDA stream of its own
        clips, owners = self._clips(chunk)
        with self.stats.stage(f"backbone:{model_name}", items=len(owners)):
            tokens = backbone.encode(clips)
            self._sync(tokens)
        if self.embeddings is not None:
            self.embeddings.add(owners, tokens, model=model_name, stats=self.stats)
        self._count("clips_encoded", len(owners))
        heads = []
        for f in self.by_model[model_name]:
            rows = [i for i, (_, clip) in enumerate(owners) if clip.kind in f.reads]
            if rows:
                with self.stats.stage(f"head:{f.name}", items=len(rows)):
                    heads.append((f, rows, f.probs(tokens[rows]).float()))
        # every head's probabilities in one table: one copy to the host per batch
        width = sum(len(f.labels) for f, *_ in heads)
        table = torch.zeros(len(owners), width, device=tokens.device)
        col = 0
        for _, rows, probs in heads:
            table[rows, col : col + probs.shape[1]] = probs
            col += probs.shape[1]
        host = table.cpu().tolist()
        col = 0
        for f, rows, _ in heads:
            n = len(f.labels)
            for i in rows:
                job, clip = owners[i]
                job.results.setdefault(f.name, []).append(
                    self._clip_result(
                        kind=clip.kind,
                        index=clip.index,
                        start_s=float(clip.start_s),
                        end_s=float(clip.end_s),
                        probs=dict(zip(f.labels, host[i][col : col + n])),
                    )
                )
            col += n

    def _sync(self, tokens) -> None:
        """While profiling, waits for the GPU so a backbone's time is not billed to the head."""
        if self.stats.keep_spans and tokens.is_cuda:
            import torch

            torch.cuda.synchronize(tokens.device)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats.add(key, n)

    # -- aggregate ----------------------------------------------------------------------------
    def aggregate(self, job) -> dict[str, Any]:
        """The learned filters' keys of a video whose clips have all been through."""
        info: dict[str, Any] = {}
        with self.stats.stage("aggregate"):
            for f in self.filters:
                info.update(f.to_info(job.results.get(f.name, [])))
        return info
