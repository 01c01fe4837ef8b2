"""The model stage: clips of several videos batched into each backbone call, shared by filters.

Filters that name the same backbone share one forward pass per clip: the stage groups filters
by `model_name`, encodes every clip any of them reads once, and hands the tokens to each
filter's head. Out-of-memory splits a batch in halves down to single clips; any other model
error is retried video by video, so one bad video never costs another its result.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vqf.errors import ErrorType, Stage, VideoError

log = logging.getLogger(__name__)


@dataclass
class _Job:
    video: int  # index into the batch of decoded videos
    clip: Any  # vqf.video.plan.Clip


class ModelStage:
    """Runs the learned filters on a batch of decoded videos."""

    def __init__(self, *, filters: list, bank: Any, clip_batch: int, stats: Any = None):
        from vqf.filters.base import ClipResult

        self._clip_result = ClipResult
        self.filters = filters
        self.bank = bank
        self.clip_batch = clip_batch
        self.stats = stats
        self.by_model: dict[str, list] = defaultdict(list)
        for f in filters:
            self.by_model[f.model_name].append(f)

    def run(self, videos: list) -> list[dict | VideoError]:
        """One info dict (the filters' keys) or one VideoError per decoded video."""
        results: list[dict[str, list]] = [defaultdict(list) for _ in videos]
        failed: dict[int, VideoError] = {}
        for model_name, filters in self.by_model.items():
            kinds = {k for f in filters for k in f.reads}
            by_length: dict[int, list[_Job]] = defaultdict(list)  # a batch stacks equal clips
            for v, decoded in enumerate(videos):
                for clip in decoded.plan.clips:
                    if clip.kind in kinds:
                        by_length[len(clip.take)].append(_Job(v, clip))
            for jobs in by_length.values():
                for start in range(0, len(jobs), self.clip_batch):
                    chunk = [
                        j for j in jobs[start : start + self.clip_batch] if j.video not in failed
                    ]
                    self._run_chunk(model_name, filters, videos, chunk, results, failed)
        out: list[dict | VideoError] = []
        for v in range(len(videos)):
            if v in failed:
                out.append(failed[v])
                continue
            info: dict[str, Any] = {}
            try:
                with self._stage("aggregate"):
                    for f in self.filters:
                        info.update(f.to_info(results[v][f.name]))
            except Exception as e:  # a head's output that cannot be aggregated
                out.append(
                    VideoError(ErrorType.MODEL_FAILED, f"aggregate: {e}", stage=Stage.AGGREGATE)
                )
                continue
            out.append(info)
        return out

    def _run_chunk(self, model_name, filters, videos, chunk, results, failed) -> None:
        if not chunk:
            return
        import torch

        try:
            self._forward(model_name, filters, videos, chunk, results)
        except torch.OutOfMemoryError:
            self._count("oom_splits")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(chunk) == 1:
                job = chunk[0]
                failed[job.video] = VideoError(
                    ErrorType.OUT_OF_MEMORY,
                    f"{model_name}: out of memory on a single clip",
                    stage=Stage.MODEL,
                    hint="lower the clip size or use a GPU with more memory",
                )
                return
            half = len(chunk) // 2
            self._run_chunk(model_name, filters, videos, chunk[:half], results, failed)
            rest = [j for j in chunk[half:] if j.video not in failed]
            self._run_chunk(model_name, filters, videos, rest, results, failed)
        except Exception as e:
            by_video = sorted({j.video for j in chunk})
            if len(by_video) == 1:
                log.warning("model %s failed on one video: %s", model_name, e)
                failed[by_video[0]] = VideoError(
                    ErrorType.MODEL_FAILED,
                    f"{model_name}: {type(e).__name__}: {e}",
                    stage=Stage.MODEL,
                )
                return
            for v in by_video:  # isolate the video that breaks the batch
                self._run_chunk(
                    model_name, filters, videos, [j for j in chunk if j.video == v], results, failed
                )

    def _forward(self, model_name, filters, videos, chunk, results) -> None:
        import torch

        backbone = self.bank.backbone(model_name)
        clips = torch.stack([videos[j.video].clip_tensor(j.clip) for j in chunk])
        with self._stage(f"backbone:{model_name}", items=len(chunk)):
            tokens = backbone.encode(clips)
            self._sync(tokens)
        self._count("clips_encoded", len(chunk))
        for f in filters:
            rows = [i for i, j in enumerate(chunk) if j.clip.kind in f.reads]
            if not rows:
                continue
            with self._stage(f"head:{f.name}", items=len(rows)):
                probs = f.probs(tokens[rows]).float().cpu().tolist()
            for i, p in zip(rows, probs):
                clip = chunk[i].clip
                results[chunk[i].video][f.name].append(
                    self._clip_result(
                        kind=clip.kind,
                        index=clip.index,
                        start_s=float(clip.start_s),
                        end_s=float(clip.end_s),
                        probs=dict(zip(f.labels, p)),
                    )
                )

    def _stage(self, name: str, *, items: int = 1):
        """Times a part of the model stage for the profiler (nothing without stats)."""
        from contextlib import nullcontext

        return self.stats.stage(name, items=items) if self.stats is not None else nullcontext()

    def _sync(self, tokens) -> None:
        """While profiling, waits for the GPU so a backbone's time is not billed to the head."""
        if self.stats is not None and self.stats.keep_spans and tokens.is_cuda:
            import torch

            torch.cuda.synchronize(tokens.device)

    def _count(self, key: str, n: int = 1) -> None:
        if self.stats is not None:
            self.stats.add(key, n)
