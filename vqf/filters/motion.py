"""Motion: mean absolute luma change between consecutive decoded frames, whole video and per window.

`score` averages over every pair of consecutive frames the plan decoded (the union of all
clips, in time order); `frozen_ratio` is the share of pairs that barely change; the video is
`static` when its score stays under `static_max`. Scores are luma in 0..1 per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vqf.filters.base import register
from vqf.filters.frames import FrameFilter, FrameSet, check_range, rounded, segment_map, to_host


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
    keys = {"frames": "motion"}
    Options = MotionOptions

    def measure(self, frames: FrameSet) -> dict[str, Any]:
        import torch

        luma = frames.luma
        if luma.shape[0] < 2:  # one frame: nothing moves, and nothing can be said to freeze
            diffs = torch.zeros(1, device=luma.device)
        else:
            diffs = (luma[1:] - luma[:-1]).abs().mean(dim=(1, 2))
        values = {
            "score": diffs.mean(),
            "frozen_ratio": (diffs < self.options.frozen_max).float().mean(),
        }
        for index, _, _, take in frames.segments:
            # pairs of consecutive decoded frames inside the window's span
            lo, hi = int(take.min()), int(take.max())
            values[f"seg{index}"] = diffs[lo:hi].mean() if hi > lo else diffs.new_zeros(())
        host = to_host(values)
        score = host["score"]
        return {
            "score": rounded(score),
            "frozen_ratio": rounded(host["frozen_ratio"], 4),
            "static": score < self.options.static_max,
            "segments": segment_map(
                frames, [host[f"seg{i}"] for i, *_ in frames.segments], "score"
            ),
        }
