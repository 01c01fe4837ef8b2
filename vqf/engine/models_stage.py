"""The model stage: clips of many videos batched into each backbone call, shared by filters.

Filters that name the same backbone share one forward pass per clip: a clip enters once per
backbone whose filters read its kind, and the tokens go to each of those filters' heads.
Clips wait in per-(backbone, length) batches; a batch runs when it is full
(`models.<name>.batch_size`), or when no clip has arrived for a moment, or at the end.
Out-of-memory splits a batch in halves down to single clips; any other model error is
retried video by video, so one bad video never costs another its result.

On a GPU the stage runs on a CUDA stream of its own, waiting on each clip's ready event, so
the decode lanes' work on the default stream and the backbones overlap.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vqf.embeddings import Embeddings
from vqf.engine.assemble import ClipPiece
from vqf.engine.flow import END, put
from vqf.errors import ErrorType, Stage, VideoError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClipJob:
    """One clip of one video on its way through one backbone (`reverse`: read backwards)."""

    job: Any  # vqf.engine.job.VideoJob
    piece: ClipPiece
    clip: Any  # vqf.video.plan.Clip
    reverse: bool
    model: str
    left: list  # [passes over this piece's buffer still to run]: it is freed at zero


class ModelStage:
    """One thread; `submit` from the decode lanes, `inbox` ends with END."""

    def __init__(
        self, engine, *, filters: list, bank: Any, batch_sizes: dict[str, int], depth: int
    ):
        from vqf.filters.base import ClipResult

        self._clip_result = ClipResult
        self.engine = engine
        self.stats = engine.stats
        self.filters = filters
        self.bank = bank
        self.batch_sizes = batch_sizes
        self.by_model: dict[str, list] = defaultdict(list)
        for f in filters:
            self.by_model[f.model_name].append(f)
        self.kinds = {k for f in filters for k in f.reads}
        self.inbox: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.flush_s = 0.05
        self.pending: dict[tuple[str, int], list[ClipJob]] = defaultdict(list)
        self.finished = threading.Event()
        self.replaced = 0
        self._stream = None
        self._lock = threading.Lock()
        self._generation = 0
        self._current: list[ClipJob] | None = None
        self._busy_since: float | None = None
        self.embeddings = Embeddings.of(engine.recipe)  # None unless sinks.embeddings.enable

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
        budget, pool = self.engine.budget, self.engine.pool
        budget.hand_over(pool, piece.nbytes)
        if piece.tensor.is_cuda:
            import torch

            piece.ready = torch.cuda.Event()
            piece.ready.record()
        left = [len(passes)]
        with job.lock:
            job.clips_out += len(passes)
        for sent, (clip, reverse, model) in enumerate(passes):
            if not put(self.inbox, ClipJob(job, piece, clip, reverse, model, left), alive=alive):
                with job.lock:
                    job.clips_out -= len(passes) - sent
                left[0] -= len(passes) - sent
                if left[0] == 0:
                    budget.free(pool, piece.nbytes)
                return False
        return True

    # -- the loop -----------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            generation = self._generation
        threading.Thread(
            target=self._loop, args=(generation,), name="vqf-models", daemon=True
        ).start()

    def _alive(self, generation: int) -> bool:
        return generation == self._generation

    def _loop(self, generation: int) -> None:
        pending = self.pending
        while self._alive(generation):
            try:
                item = self.inbox.get(timeout=self.flush_s)
            except queue.Empty:
                item = None
            if item is END:
                for key in list(pending):
                    if self._alive(generation):
                        self._run(pending.pop(key), generation)
                if self._alive(generation):
                    self.finished.set()
                return
            if item is not None:
                key = (item.model, int(item.piece.tensor.shape[0]))
                pending[key].append(item)
                if len(pending[key]) >= self.batch_sizes.get(item.model, 8):
                    self._run(pending.pop(key), generation)
                continue
            if pending:  # nothing arrived for a moment: run the fullest batch
                self._run(pending.pop(max(pending, key=lambda k: len(pending[k]))), generation)

    def _run(self, batch: list[ClipJob], generation: int) -> None:
        with self._lock:
            self._current, self._busy_since = batch, time.monotonic()
        try:
            live = [c for c in batch if not c.job.closed]
            label = ",".join(sorted({c.job.video_id for c in live}))
            if live:
                with self.stats.stage("model", items=len(live), label=label):
                    self._run_chunk(live[0].model, live)
        finally:
            with self._lock:
                abandoned = not self._alive(generation)
                if not abandoned:
                    self._current, self._busy_since = None, None
            if not abandoned:  # else the watchdog settled this batch
                for c in batch:
                    self._done(c)

    def watch(self, *, timeout_s: float) -> None:
        """A batch running past `timeout_s` (a hung kernel, a stuck driver call): its videos
        get TIMEOUT rows and a fresh thread takes over the queue and the waiting batches."""
        with self._lock:
            if self._busy_since is None or time.monotonic() - self._busy_since <= timeout_s:
                return
            batch, self._current, self._busy_since = self._current, None, None
            self._generation += 1
        self.stats.add("model_timeouts")
        self.replaced += 1
        for job in {id(c.job): c.job for c in batch}.values():
            log.error("the models made no progress on %s for %.0f s", job.video_id, timeout_s)
            self.engine.fail(
                job,
                VideoError(
                    ErrorType.TIMEOUT,
                    f"the model stage made no progress on {job.video_id} for "
                    f"decode.timeout_s = {timeout_s:g}s",
                    stage=Stage.MODEL,
                    hint="raise decode.timeout_s, or check the GPU and its driver",
                ),
            )
        for c in batch:
            self._done(c)
        self.start()

    def _done(self, c: ClipJob) -> None:
        c.left[0] -= 1
        if c.left[0] == 0:
            self.engine.budget.free(self.engine.pool, c.piece.nbytes)
            c.piece.tensor = None
        with c.job.lock:
            c.job.clips_out -= 1
        self.engine.maybe_finish(c.job)

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
                self.engine.fail(
                    chunk[0].job,
                    VideoError(
                        ErrorType.OUT_OF_MEMORY,
                        f"{model_name}: out of memory on a single clip",
                        stage=Stage.MODEL,
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
                self.engine.fail(
                    videos[0],
                    VideoError(
                        ErrorType.MODEL_FAILED,
                        f"{model_name}: {type(e).__name__}: {e}",
                        stage=Stage.MODEL,
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
                stream = torch.cuda.current_stream(tensor.device)
                stream.wait_event(c.piece.ready)
                tensor.record_stream(stream)
            rows.append(tensor.flip(0) if c.reverse else tensor)
            owners.append((c.job, c.clip))
        return torch.stack(rows), owners

    def _forward(self, model_name: str, chunk: list[ClipJob]) -> None:
        import torch

        self.engine.entering({id(c.job): c.job for c in chunk}.values(), "model")
        backbone = self.bank.backbone(model_name)
        with self._on_stream(backbone):
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

    def _on_stream(self, backbone):
        """The stage's own CUDA stream on a GPU; nothing on a CPU."""
        from contextlib import nullcontext

        import torch

        device = getattr(backbone, "device", None)
        if device is None or torch.device(device).type != "cuda":
            return nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return torch.cuda.stream(self._stream)

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
