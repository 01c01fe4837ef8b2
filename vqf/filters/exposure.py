"""Exposure: mean luma of the whole-video clip, and the shares of dark and blown-out pixels.

Luma is BT.601 in 0..1 on the decoded clip frames; a pixel is dark under `dark_level` and
blown out over `bright_level`.
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
class ExposureOptions:
    dark_level: float = 0.1  # luma under this counts as dark (about 25 of 255)
    bright_level: float = 0.95  # luma over this counts as blown out (about 242 of 255)

    def __post_init__(self):
        check_range("exposure", "dark_level", self.dark_level)
        check_range("exposure", "bright_level", self.bright_level)
        if self.dark_level >= self.bright_level:
            raise ConfigError(
                f"filters.exposure.options: dark_level {self.dark_level} must be below "
                f"bright_level {self.bright_level}"
            )


@register
class ExposureFilter(FrameFilter):
    name = "exposure"
    keys = {"frames": "exposure"}
    Options = ExposureOptions

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        import torch

        y = pixels.luma
        pixels_per_frame = y.shape[1] * y.shape[2]

        def share(mask):  # counted on the mask itself: no float copy of the chunk
            return torch.count_nonzero(mask, dim=(1, 2)).float() / pixels_per_frame

        return {
            "mean_luma": y.mean(dim=(1, 2)),
            "dark_share": share(y < self.options.dark_level),
            "bright_share": share(y > self.options.bright_level),
        }

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        # every frame has the same size, so the mean of per-frame shares is the pixels' share
        return {key: rounded(float(v[layout.whole].mean()), 4) for key, v in features.items()}
