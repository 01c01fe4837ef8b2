"""Cuts: hard scene cuts where the colour histograms of consecutive decoded frames jump.

Each frame gets a `bins`-bin histogram per RGB channel; the distance between two frames is
half the L1 difference (0 same, 1 disjoint), averaged over channels. A jump over `threshold`
is a cut, placed halfway between the two frames' times (the true cut lies between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vqf.errors import ConfigError
from vqf.filters.base import register
from vqf.filters.frames import FrameFilter, FrameSet, check_range, rounded


@dataclass(frozen=True)
class CutsOptions:
    threshold: float = 0.5  # histogram distance over which two consecutive frames are a cut
    bins: int = 16  # histogram bins per channel; few bins keep the measure stable on small frames

    def __post_init__(self):
        check_range("cuts", "threshold", self.threshold)
        if not 2 <= self.bins <= 256:
            raise ConfigError(
                f"filters.cuts.options.bins = {self.bins} is out of range", hint="use 2 to 256"
            )


@register
class CutsFilter(FrameFilter):
    name = "cuts"
    keys = {"frames": "cuts"}
    Options = CutsOptions

    def measure(self, frames: FrameSet) -> dict[str, Any]:
        if frames.rgb.shape[0] < 2:
            return {"count": 0, "times": [], "max_distance": 0.0}
        hist = histograms(frames.rgb, bins=self.options.bins)
        distance = 0.5 * (hist[1:] - hist[:-1]).abs().sum(dim=2).mean(dim=1)
        # two small host copies: the distances' maximum and the (few) cut positions
        at = (distance > self.options.threshold).nonzero().flatten().cpu().numpy()
        times = [(frames.times[i] + frames.times[i + 1]) / 2 for i in at]
        return {
            "count": len(times),
            "times": [round(float(t), 3) for t in times],
            "max_distance": rounded(distance.max().item(), 4),
        }


def histograms(rgb, *, bins: int):
    """(N, 3, H, W) in 0..1 -> (N, 3, bins) per-channel histograms summing to 1."""
    import torch

    n, c = rgb.shape[:2]
    index = (rgb * bins).long().clamp_(0, bins - 1).flatten(2)
    counts = torch.zeros(n, c, bins, device=rgb.device)
    counts.scatter_add_(2, index, torch.ones_like(index, dtype=counts.dtype))
    return counts / index.shape[2]
