"""Clip assembly: clips gathered from a video's decoded chunks as their frames arrive.

Each clip the models read gets a buffer of its own (T, 3, H, W), filled from the chunks that
hold its frames and handed on the moment it is complete; frames no pending clip needs are
never kept, so memory follows the clips open at a time (the whole-video clip and the one or
two windows the decode is passing through), not the video's length. A reversed window shares
its window's buffer and is read backwards by the model stage.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from vqf.video.plan import Clip, SamplingPlan


class ClipPiece:
    """A complete clip that owns itself: `tensor` (T, 3, H, W) in plan order, its bytes under
    the budget, its ready event on its own device's stream, and its release, exactly once.

    `clips` are the plan's clips this buffer serves (a window and its reversed twin, read
    backwards). The model stage makes one pass over it per (clip, backbone); the last pass
    done (or `drop` of the passes never made) gives the bytes back.
    """

    def __init__(self, clips: list[tuple[Clip, bool]], tensor, *, budget=None):
        self.clips = clips
        self.tensor = tensor
        self.nbytes = _nbytes(tensor)
        self.budget = budget
        self.pool = budget.pool_of(tensor) if budget is not None else "host"
        self.ready = None  # a CUDA event the consumer's stream waits on (GPU only)
        self._passes = 0
        self._handed = False
        self._released = False
        self._lock = threading.Lock()

    def hand_over(self, passes: int) -> None:
        """The clip goes to the model stage for `passes` passes; on a GPU its ready event is
        recorded on the filling thread's stream of the tensor's own device."""
        with self._lock:
            self._passes, self._handed = passes, True
        if self.budget is not None:
            self.budget.hand_over(self.pool, self.nbytes)
        if getattr(self.tensor, "is_cuda", False):
            import torch

            self.ready = torch.cuda.Event()
            self.ready.record(torch.cuda.current_stream(self.tensor.device))
        if passes == 0:
            self.release()

    def done(self, passes: int = 1) -> None:
        """`passes` passes are over (run, failed or never made): the last one releases."""
        with self._lock:
            self._passes -= passes
            last = self._passes <= 0
        if last:
            self.release()

    def release(self) -> None:
        """Gives the bytes back to the budget, once, whatever path got here."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.budget is not None:
            self.budget.free(self.pool, self.nbytes, queued=self._handed)
        self.tensor = None

    def wait_on(self, stream) -> None:
        """The consumer's `stream` waits for the copies that filled the clip."""
        if self.ready is not None:
            stream.wait_event(self.ready)
            self.tensor.record_stream(stream)


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
                done.append(ClipPiece(b.clips, b.buffer, budget=self.budget))
            else:
                still.append(b)
        self._open = still
        return done

    def settle(self, frames) -> None:
        """Waits until the copies out of `frames` are done: on a GPU, DALI reuses its output
        buffers at the pipeline's next run, so the copies must not still be queued then."""
        if getattr(frames, "is_cuda", False):
            import torch

            torch.cuda.current_stream(frames.device).synchronize()

    def discard(self) -> None:
        """Frees the buffers of clips that will never complete (the video failed)."""
        for b in self._open:
            if b.buffer is not None and self.budget is not None:
                self.budget.free(self.budget.pool_of(b.buffer), _nbytes(b.buffer), queued=False)
        self._open, self._waiting = [], []


def _nbytes(tensor) -> int:
    return int(tensor.numel() * tensor.element_size())
