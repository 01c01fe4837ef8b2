"""Motion: mean absolute luma change between consecutive decoded frames, whole video and per window.

`score` averages over every pair of consecutive frames the plan decoded (the union of all
clips and the dense grid, in time order: motion reads the grid, so its pairs are at most
1/`sampling.dense_fps` apart whichever other filters are on); `frozen_ratio` is the share of pairs that barely change; the video is
`static` when its score stays under `static_max`. Scores are luma in 0..1 per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqf.filters.base import register
from vqf.filters.frames import (
    DENSE,
    FrameFilter,
    FrameLayout,
    Pixels,
    check_range,
    rounded,
    segment_map,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MotionOptions:
    static_max: float = 0.004  # a video whose score stays under this is static
    frozen_max: float = 0.002  # a pair of frames changing less than this is frozen

    def __post_init__(self):
        check_range("motion", "static_max", self.static_max)
        check_range("motion", "frozen_max", self.frozen_max)


@register
class MotionFilter(FrameFilter):
    name = "motion"
    reads = DENSE
    keys = {"frames": "motion"}
    Options = MotionOptions

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        import torch

        # each frame's change from the one before; a video's first frame has none (NaN)
        y, prev = pixels.luma, pixels.prev_luma
        first = y.new_full((1,), float("nan")) if prev is None else change(prev, y[:1])
        return {"diff": torch.cat([first, change(y[:-1], y[1:])])}

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        diffs = features["diff"][1:]  # diffs[i]: frames i and i + 1
        if len(diffs) == 0:  # one frame: nothing moves, and nothing can be said to freeze
            diffs = np.zeros(1)
        segments = []
        for _, _, _, take in layout.segments:
            # pairs of consecutive decoded frames inside the window's span
            lo, hi = int(take.min()), int(take.max())
            segments.append(float(diffs[lo:hi].mean()) if hi > lo else 0.0)
        score = float(diffs.mean())
        return {
            "score": rounded(score),
            "frozen_ratio": rounded(float((diffs < self.options.frozen_max).mean()), 4),
            "static": score < self.options.static_max,
            "segments": segment_map(layout, segments, "score"),
        }


def change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(n, H, W) twice -> (n,) mean absolute luma change, with one temporary."""
    return (after - before).abs_().mean(dim=(1, 2))
