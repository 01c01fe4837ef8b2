"""Sharpness: detail measured on the detection frames as decoded, before any resize.

The clip the models see is resized to the sampling size, where a 4x upscale or a soft encode
is invisible; so this filter reads the detection frames at the video's own resolution
(`DetectFrames.native`, on the decoder's device) and measures, on their luma (0..255), with
uniform edge lines (letterbox bars) trimmed first:

- `si`: ITU-T P.910 spatial information, the spread of the Sobel gradient magnitude, averaged
  over the frames (what FFmpeg's `siti` filter reports as its SI average);
- `score`: `si` over the spread of luma at a quarter of the size (the picture's contrast,
  which blur and grain hardly change), so a dark or low-contrast picture keeps its score, a
  blurred, smeared or upscaled one loses it, and grain adds to it as it adds to SI;
  `blurry` is `score < blur_max`;
- `upscale`: the factor the video was enlarged by (1.0 = detail up to the pixel grid), from the
  frequency at which the luma spectrum, whitened by f^2 (natural pictures fall as 1/f^2), first
  drops `cutoff_db` under its highest level at lower frequencies, along rows and along columns: detail that a
  video never had stops at 1 / (2 x factor) cycles per pixel. Gaussian blur removes the same
  frequencies and reads as an upscale too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqf.config import FilterConfig
from vqf.errors import ConfigError
from vqf.filters.base import DetectionFilter, DetectResult, register
from vqf.filters.frames import LUMA, check_range, rounded

if TYPE_CHECKING:
    import torch

    from vqf.video.plane import DetectFrames

FLAT_STD = 2.0  # luma spread (0..255) under which a frame shows nothing to measure
EDGE_RANGE = 6.0  # an edge line whose luma varies less than this on every frame is a bar
BANDS = (0.02, 0.5, 0.025)  # whitened-spectrum bands: first edge, last edge, width (cycles/px)
PLATEAU = 3  # bands that give the low-frequency level
MIN_SIDE = 64  # pixels a side needs for a spectrum


@dataclass(frozen=True)
class SharpnessOptions:
    blur_max: float = 0.6  # a score under this marks the video blurry (see the README's table)
    cutoff_db: float = 10.0  # drop under the low-frequency level where detail ends

    def __post_init__(self):
        check_range("sharpness", "blur_max", self.blur_max, high=8.0)
        check_range("sharpness", "cutoff_db", self.cutoff_db, low=1.0, high=40.0)


@register
class SharpnessFilter(DetectionFilter):
    name = "sharpness"
    labels = ()
    keys = {"detect": "sharpness"}
    default_model = ""
    Options = SharpnessOptions

    def __init__(self, *, spec: FilterConfig, bank=None):
        super().__init__(spec=spec, bank=bank)
        if self.model_name:
            raise ConfigError(
                f"filters.sharpness.model = {self.model_name!r}, but sharpness uses no model",
                hint="remove filters.sharpness.model",
            )

    def detect_decoded(self, videos: list[DetectFrames]) -> list[DetectResult]:
        return [self.measure(v.native) for v in videos]

    def detect(self, frames, *, letterbox) -> DetectResult:
        raise TypeError("sharpness reads the frames as decoded: call detect_decoded()")

    def measure(self, native: torch.Tensor) -> DetectResult:
        """Row keys of one video from its frames as decoded, (D, H, W, 3) uint8."""
        import torch

        with torch.inference_mode():
            y = trim_bars(luma255(native))
            spread = y.flatten(1).std(dim=1)
            y = y[spread >= FLAT_STD]
            if len(y) == 0 or min(y.shape[1:]) < 3:
                info = {"score": 0.0, "si": 0.0, "upscale": None, "blurry": False, "frames": 0}
                return DetectResult(info={self.keys["detect"]: info}, crop=None)
            si = sobel_spread(y)
            ratio = si / contrast(y).clamp_min(FLAT_STD)
            score, si_mean = (float(v) for v in torch.stack([ratio.mean(), si.mean()]).cpu())
            upscale = upscale_factor(y, cutoff_db=self.options.cutoff_db)
        info: dict[str, Any] = {
            "score": rounded(score, 4),
            "si": rounded(si_mean, 2),
            "upscale": None if upscale is None else rounded(upscale, 2),
            "blurry": score < self.options.blur_max,
            "frames": len(y),
        }
        return DetectResult(info={self.keys["detect"]: info}, crop=None)


def luma255(native: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) uint8 RGB -> (D, H, W) float32 BT.601 luma, 0..255."""
    rgb = native.float()
    r, g, b = LUMA
    return rgb[..., 0] * r + rgb[..., 1] * g + rgb[..., 2] * b


def contrast(y: torch.Tensor) -> torch.Tensor:
    """(D, H, W) -> (D,) luma spread of the picture at a quarter of its size: the contrast of
    what it shows, which neither blur nor grain changes much."""
    import torch.nn.functional as F

    pooled = F.avg_pool2d(y.unsqueeze(1), kernel_size=4, ceil_mode=True)
    return pooled.flatten(1).std(dim=1)


def trim_bars(y: torch.Tensor) -> torch.Tensor:
    """`y` without the edge lines that are flat on every frame (bars), at most 45% a side."""
    import torch

    def flat_run(lines: torch.Tensor) -> int:  # lines: (L, ...) from the edge inwards
        flat = (lines.flatten(1).amax(dim=1) - lines.flatten(1).amin(dim=1)) < EDGE_RANGE
        return int(flat.long().cumprod(dim=0).sum())

    h, w = y.shape[1:]
    rows, cols = y.transpose(0, 1), y.permute(2, 0, 1)
    top = min(flat_run(rows), int(0.45 * h))
    bottom = min(flat_run(torch.flip(rows, dims=(0,))), int(0.45 * h))
    left = min(flat_run(cols), int(0.45 * w))
    right = min(flat_run(torch.flip(cols, dims=(0,))), int(0.45 * w))
    return y[:, top : h - bottom, left : w - right]


def sobel_spread(y: torch.Tensor) -> torch.Tensor:
    """(D, H, W) luma -> (D,) standard deviation of the Sobel gradient magnitude (P.910 SI)."""
    import torch
    import torch.nn.functional as F

    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=y.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    grad = F.conv2d(y.unsqueeze(1), kernels)  # valid: no made-up border pixels
    return grad.pow(2).sum(dim=1).sqrt().flatten(1).std(dim=1)


def upscale_factor(y: torch.Tensor, *, cutoff_db: float) -> float | None:
    """How many times larger the frames are than the detail they hold (>= 1), or None when a
    side is too short for a spectrum. The sharper axis decides: an upscale enlarges both."""
    if min(y.shape[1:]) < MIN_SIDE:
        return None
    top = max(
        cutoff_frequency(y, cutoff_db=cutoff_db),
        cutoff_frequency(y.transpose(1, 2), cutoff_db=cutoff_db),
    )
    return max(1.0, 0.5 / top)


def cutoff_frequency(y: torch.Tensor, *, cutoff_db: float) -> float:
    """Cycles per pixel along the last axis where the whitened spectrum first falls
    `cutoff_db` under its low-frequency level; 0.5 (the pixel grid) when it never does."""
    import torch

    n = y.shape[-1]
    window = torch.hann_window(n, periodic=False, device=y.device)
    lines = (y - y.mean(dim=-1, keepdim=True)) * window
    power = torch.fft.rfft(lines).abs().pow(2).mean(dim=(0, 1))
    freq = torch.fft.rfftfreq(n, device=y.device)
    white = power * freq.pow(2)
    first, last, width = BANDS
    edges = [first + i * width for i in range(round((last - first) / width) + 1)]
    levels = torch.stack(
        [white[(freq >= a) & (freq < b)].mean() for a, b in zip(edges[:-1], edges[1:])]
    )
    db = (10 * torch.log10(levels / levels[:PLATEAU].mean())).cpu().tolist()
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    top = 0.0  # the highest level so far: drawn edges lift the middle bands over the plateau
    for k in range(PLATEAU, len(db)):
        if not math.isfinite(db[k]) or db[k] < top - cutoff_db:
            prev, floor = db[k - 1], top - cutoff_db
            t = (prev - floor) / (prev - db[k]) if math.isfinite(db[k]) and prev > db[k] else 0
            return centres[k - 1] + t * (centres[k] - centres[k - 1])
        top = max(top, db[k])
    return 0.5
