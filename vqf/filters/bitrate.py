"""Bitrate: how many bits the container spends on the video, from the probe, no pixels read.

`kbps` is the file's size over its duration (every stream: audio adds its own, often
64-192 kbps); `bits_per_pixel` spreads those bits over every pixel of every frame, which
compares videos of different sizes and rates: well-encoded H.264 at 1080p30 spends about
0.05-0.15, a copy crushed by re-encoding far less. Still or flat pictures compress well too,
so a low figure is worth a look, not proof of damage; `low` is set under `bpp_min`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqf.filters.base import register
from vqf.filters.frames import FrameFilter, FrameLayout, Pixels, check_range, rounded

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BitrateOptions:
    bpp_min: float = 0.02  # bits per pixel per frame under which a video is marked low

    def __post_init__(self):
        check_range("bitrate", "bpp_min", self.bpp_min, high=24.0)


@register
class BitrateFilter(FrameFilter):
    name = "bitrate"
    keys = {"frames": "bitrate"}
    Options = BitrateOptions

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        return {}  # the container says it all

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        info = layout.info
        if info is None:  # measured without a probe: nothing to say
            return {"kbps": 0.0, "bits_per_pixel": 0.0, "low": False}
        seconds, bits = float(info.duration_s), 8.0 * float(info.size_bytes)
        frames = info.frame_count or round(seconds * info.fps)
        pixels = info.width * info.height * frames
        kbps = bits / seconds / 1000.0 if seconds > 0 else 0.0
        bpp = bits / pixels if pixels > 0 else 0.0
        return {
            "kbps": rounded(kbps, 1),
            "bits_per_pixel": rounded(bpp, 5),
            "low": bpp < self.options.bpp_min,
        }
