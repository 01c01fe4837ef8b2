"""The sampling plan: which frames each clip reads, and the union of them all to decode once.

Clips follow the seed (DESIGN.md section 3): one whole-video clip, windows of `window_s`
every `stride_s` (plus an end-aligned window over an uncovered tail longer than `tail_min_s`,
or one window over everything when the video is shorter than a window), and the same windows
reversed. Frames are chosen by presentation time, so variable frame rate works.

A dense grid of at least `dense_fps` frames a second over the whole video joins the union
when a frame filter reads it (cuts, motion: they declare it), so they see every part of the
video closely spaced without a decode of their own; clips still read exactly their own frames.
Without such a filter the caller plans with `dense_fps=0` and no frame is decoded for nobody.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vqf.config import SamplingConfig

ClipKind = Literal["whole", "segment", "inverse"]
EPS = 1e-6


@dataclass(frozen=True, eq=False)
class Clip:
    """One clip: `take` indexes into the plan's `frames` (reversed for inverse clips)."""

    kind: ClipKind
    index: int
    start_s: float
    end_s: float
    take: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """`frames`: sorted distinct frame indices to decode; clips, detection and the dense grid
    (`dense`, positions of the >= `sampling.dense_fps` grid; empty when it is off) index into it."""

    frames: np.ndarray
    clips: tuple[Clip, ...]
    detect_take: np.ndarray
    duration_s: float
    dense: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @property
    def frames_needed(self) -> int:
        """Frames all clips read together; with `frames` it measures the decode-once saving."""
        return sum(len(c.take) for c in self.clips)

    @property
    def detect_frames(self) -> np.ndarray:
        return self.frames[self.detect_take]

    def clips_of(self, kind: ClipKind) -> list[Clip]:
        return [c for c in self.clips if c.kind == kind]

    def frame_indices(self, clip: Clip) -> np.ndarray:
        """Frame indices of the video that `clip` reads, in clip order."""
        return self.frames[clip.take]


def make_plan(
    timestamps: np.ndarray,
    *,
    sampling: SamplingConfig,
    duration_s: float | None = None,
    dense_fps: float | None = None,
) -> SamplingPlan:
    """Plans the clips of a video whose frames show at `timestamps` (seconds, sorted).

    `duration_s` defaults to the last timestamp plus one median frame interval; `dense_fps`
    to `sampling.dense_fps` (`vqf.filters.dense_fps(recipe)` gives 0 when no enabled filter
    reads the dense grid).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1 or len(ts) == 0:
        raise ValueError("make_plan needs at least one timestamp")
    duration = float(duration_s) if duration_s is not None else _duration(ts)
    whole = _pick(ts, 0.0, duration, sampling.whole_frames)
    windows = segment_windows(
        duration,
        window_s=sampling.window_s,
        stride_s=sampling.stride_s,
        tail_min_s=sampling.tail_min_s,
    )
    segments = [_pick(ts, s, e, sampling.window_frames) for s, e in windows]
    detect = np.unique(_pick(ts, 0.0, duration, max(1, sampling.detect_frames)))
    fps = sampling.dense_fps if dense_fps is None else dense_fps
    dense = dense_grid(ts, duration_s=duration, fps=fps)
    frames = np.unique(np.concatenate([whole, detect, dense, *segments]))

    def take(indices: np.ndarray) -> np.ndarray:
        return np.searchsorted(frames, indices).astype(np.int64)

    clips = [Clip("whole", 0, 0.0, duration, take(whole))]
    clips += [
        Clip("segment", i, s, e, take(idx))
        for i, ((s, e), idx) in enumerate(zip(windows, segments, strict=True))
    ]
    clips += [
        Clip("inverse", i, s, e, take(idx)[::-1].copy())
        for i, ((s, e), idx) in enumerate(zip(windows, segments, strict=True))
    ]
    return SamplingPlan(frames, tuple(clips), take(detect), duration, dense=take(dense))


def dense_grid(ts: np.ndarray, *, duration_s: float, fps: float) -> np.ndarray:
    """Frame indices no more than 1/`fps` seconds apart from the first frame to the last
    (each the latest frame within reach of the one before); none when `fps` is 0. A video
    slower than `fps` gives every frame; `duration_s` is accepted for symmetry with clips."""
    if fps <= 0 or len(ts) == 0:
        return np.zeros(0, np.int64)
    # decided at Matroska's millisecond resolution: at 23.976 fps three frames last 0.12512 s,
    # which Matroska stores as 0.125, within a 1/8 s step; rounding every container's times
    # alike gives a file and its remux the same grid, so the same frame pairs to compare
    ts = np.round(np.asarray(ts, dtype=np.float64), 3)
    step, out, i = 1.0 / fps, [0], 0
    while True:
        j = int(np.searchsorted(ts, ts[i] + step + EPS, side="right")) - 1
        j = max(j, i + 1)  # a hole in a variable-rate video longer than the step
        if j >= len(ts):
            return np.asarray(out, dtype=np.int64)
        out.append(j)
        i = j


def segment_windows(
    duration_s: float, *, window_s: float, stride_s: float, tail_min_s: float
) -> list[tuple[float, float]]:
    """Windows [start, end] in seconds: every `stride_s`, an end-aligned one for a long tail."""
    if duration_s < window_s - EPS:
        return [(0.0, duration_s)]
    windows, start = [], 0.0
    while start + window_s <= duration_s + EPS:
        windows.append((start, start + window_s))
        start = len(windows) * stride_s
    covered = windows[-1][1]
    if duration_s - covered > tail_min_s + EPS:
        windows.append((duration_s - window_s, duration_s))
    return [(round(s, 6), round(e, 6)) for s, e in windows]


def _pick(ts: np.ndarray, start: float, end: float, n: int) -> np.ndarray:
    """`n` frame indices spread evenly over the frames shown in [start, end), by time."""
    lo = int(np.searchsorted(ts, start - EPS, side="left"))
    hi = int(np.searchsorted(ts, end - EPS, side="left"))
    if hi <= lo:  # a gap in a variable-rate video: the frame on screen at the window's middle
        on_screen = max(0, int(np.searchsorted(ts, (start + end) / 2, side="right")) - 1)
        return np.full(n, on_screen, dtype=np.int64)
    targets = np.linspace(ts[lo], ts[hi - 1], n)
    return _nearest(ts[lo:hi], targets) + lo


def _nearest(ts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(ts, targets), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    closer_left = np.abs(ts[left] - targets) <= np.abs(ts[right] - targets)
    return np.where(closer_left, left, right).astype(np.int64)


def _duration(ts: np.ndarray) -> float:
    interval = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
    return float(ts[-1] + interval)
