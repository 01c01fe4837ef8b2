"""Clip assembly: clips gathered from a video's decoded chunks as their frames arrive.

Each clip the models read gets a buffer of its own (T, 3, H, W), filled from the chunks that
hold its frames and handed on the moment it is complete; frames no pending clip needs are
never kept, so memory follows the clips open at a time (the whole-video clip and the one or
two windows the decode is passing through), not the video's length. A reversed window shares
its window's buffer and is read backwards by the model stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vqf.video.plan import Clip, SamplingPlan


@dataclass(eq=False)
class ClipPiece:
    """A complete clip: `tensor` (T, 3, H, W) in plan order; `reverse` reads it backwards.

    `clips` are the plan's clips this buffer serves (a window and its reversed twin)."""

    clips: list[tuple[Clip, bool]]
    tensor: object  # torch.Tensor
    nbytes: int = 0
    ready: object = None  # a CUDA event the consumer waits on (GPU only)


@dataclass(eq=False)
class _Building:
    take: np.ndarray  # plan positions, in clip order
    clips: list[tuple[Clip, bool]]
    first: int = field(init=False)
    buffer: object = None
    filled: int = 0

    def __post_init__(self):
        self.first = int(self.take.min())


class ClipAssembler:
    """Builds the clips of kinds `kinds` of one video from its chunks, in decode order."""

    def __init__(self, plan: SamplingPlan, *, kinds: set[str], budget=None):
        self.budget = budget
        segments = {c.index: c for c in plan.clips if c.kind == "segment"}
        building: list[_Building] = []
        twins: dict[int, _Building] = {}
        for clip in plan.clips:
            if clip.kind not in kinds:
                continue
            if clip.kind == "inverse":
                fwd = segments.get(clip.index)
                if fwd is not None and "segment" in kinds and clip.index in twins:
                    if np.array_equal(fwd.take[::-1], clip.take):
                        twins[clip.index].clips.append((clip, True))
                        continue
            b = _Building(take=np.asarray(clip.take, dtype=np.int64), clips=[(clip, False)])
            if clip.kind == "segment":
                twins[clip.index] = b
            building.append(b)
        building.sort(key=lambda b: b.first)
        self._waiting = building  # sorted by first position; not started yet
        self._open: list[_Building] = []
        self.pieces = len(building)

    @property
    def pending(self) -> int:
        return len(self._waiting) + len(self._open)

    def add(self, start: int, frames) -> list[ClipPiece]:
        """Takes one chunk (plan positions start .. start + n - 1); returns clips it completed."""
        import torch

        end = start + int(frames.shape[0])
        while self._waiting and self._waiting[0].first < end:
            self._open.append(self._waiting.pop(0))
        done, still = [], []
        for b in self._open:
            slots = np.flatnonzero((b.take >= start) & (b.take < end))
            if len(slots):
                if b.buffer is None:
                    b.buffer = frames.new_empty((len(b.take), *frames.shape[1:]))
                    if self.budget is not None:
                        self.budget.hold(self.budget.pool_of(b.buffer), _nbytes(b.buffer))
                device = frames.device
                local = torch.as_tensor(b.take[slots] - start, device=device)
                b.buffer[torch.as_tensor(slots, device=device)] = frames.index_select(0, local)
                b.filled += len(slots)
            if b.filled == len(b.take):
                done.append(ClipPiece(clips=b.clips, tensor=b.buffer, nbytes=_nbytes(b.buffer)))
            else:
                still.append(b)
        self._open = still
        return done

    def discard(self) -> None:
        """Frees the buffers of clips that will never complete (the video failed)."""
        for b in self._open:
            if b.buffer is not None and self.budget is not None:
                self.budget.free(self.budget.pool_of(b.buffer), _nbytes(b.buffer), queued=False)
        self._open, self._waiting = [], []


def _nbytes(tensor) -> int:
    return int(tensor.numel() * tensor.element_size())
