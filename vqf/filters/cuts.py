"""Cuts: hard scene cuts where the colour histograms of consecutive decoded frames jump.

Each frame gets a `bins`-bin histogram per RGB channel; the distance between two frames is
half the L1 difference (0 same, 1 disjoint), averaged over channels. A jump over `threshold`
is a cut, placed halfway between the two frames' times (the true cut lies between them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqf.errors import ConfigError
from vqf.filters.base import register
from vqf.filters.frames import FrameFilter, FrameLayout, Pixels, check_range, rounded

if TYPE_CHECKING:
    import torch


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

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        import torch

        hist = histograms(pixels.with_prev("rgb"), bins=self.options.bins)
        distance = 0.5 * (hist[1:] - hist[:-1]).abs().sum(dim=2).mean(dim=1)
        if pixels.prev_rgb is None:  # a video's first frame follows nothing
            distance = torch.cat([distance.new_full((1,), float("nan")), distance])
        return {"distance": distance}

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        distance = features["distance"][1:]  # distance[i]: frames i and i + 1
        if len(distance) == 0:
            return {"count": 0, "times": [], "max_distance": 0.0}
        at = np.flatnonzero(distance > self.options.threshold)
        times = [(layout.times[i] + layout.times[i + 1]) / 2 for i in at]
        return {
            "count": len(times),
            "times": [round(float(t), 3) for t in times],
            "max_distance": rounded(float(distance.max()), 4),
        }


def histograms(rgb, *, bins: int):
    """(N, 3, H, W) in 0..1 -> (N, 3, bins) per-channel histograms summing to 1."""
    import torch

    n, c = rgb.shape[:2]
    index = (rgb * bins).long().clamp_(0, bins - 1).flatten(2)
    counts = torch.zeros(n, c, bins, device=rgb.device)
    counts.scatter_add_(2, index, torch.ones_like(index, dtype=counts.dtype))
    return counts / index.shape[2]
