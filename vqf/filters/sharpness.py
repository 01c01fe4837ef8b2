"""Sharpness: detail measured on the detection frames as decoded, before any resize.

The clip the models see is resized to the sampling size, where a 4x upscale or a soft encode
is invisible; so this filter reads the detection frames at the video's own resolution
(`DetectFrames.native`, on the decoder's device) and measures, on their luma (0..255), with
uniform edge lines (letterbox bars) trimmed first and frames over 1280 pixels a side measured
on their centre:

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
MAX_SIDE = 1280  # a larger frame is measured on its centre, at its own resolution (cost)


@dataclass(frozen=True)
class SharpnessOptions:
    blur_max: float = 0.6  # a score under this marks the video blurry (see the README's table)
    cutoff_db: float = 9.0  # drop under the spectrum's peak so far where detail ends

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
            y = trim_bars(luma255(centre(native, side=MAX_SIDE)))
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


def centre(native: torch.Tensor, *, side: int) -> torch.Tensor:
    """(D, H, W, C) -> the centred window of at most `side` x `side` pixels (a view)."""
    h, w = native.shape[1:3]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return native[:, top : top + min(h, side), left : left + min(w, side)]


def luma255(native: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) uint8 RGB -> (D, H, W) float32 BT.601 luma, 0..255."""
    import torch

    weights = torch.tensor(LUMA, device=native.device)
    return native.float() @ weights


def contrast(y: torch.Tensor) -> torch.Tensor:
    """(D, H, W) -> (D,) luma spread of the picture at a quarter of its size: the contrast of
    what it shows, which neither blur nor grain changes much."""
    import torch.nn.functional as F

    pooled = F.avg_pool2d(y.unsqueeze(1), kernel_size=4, ceil_mode=True)
    return pooled.flatten(1).std(dim=1)


def trim_bars(y: torch.Tensor) -> torch.Tensor:
    """`y` without the edge lines that are flat on every frame (bars), at most 45% a side."""
    h, w = y.shape[1:]
    flat_rows = (y.amax(dim=(0, 2)) - y.amin(dim=(0, 2))) < EDGE_RANGE  # (H,)
    flat_cols = (y.amax(dim=(0, 1)) - y.amin(dim=(0, 1))) < EDGE_RANGE  # (W,)

    def run(flat) -> int:  # leading flat lines
        return int(flat.long().cumprod(dim=0).sum())

    top, bottom = min(run(flat_rows), int(0.45 * h)), min(run(flat_rows.flip(0)), int(0.45 * h))
    left, right = min(run(flat_cols), int(0.45 * w)), min(run(flat_cols.flip(0)), int(0.45 * w))
    return y[:, top : h - bottom, left : w - right]


def sobel_spread(y: torch.Tensor) -> torch.Tensor:
    """(D, H, W) luma -> (D,) standard deviation of the Sobel gradient magnitude (P.910 SI),
    over the pixels with all eight neighbours (no made-up border pixels)."""
    across = y[:, :, 2:] - y[:, :, :-2]
    gx = across[:, :-2] + 2 * across[:, 1:-1] + across[:, 2:]
    down = y[:, 2:] - y[:, :-2]
    gy = down[:, :, :-2] + 2 * down[:, :, 1:-1] + down[:, :, 2:]
    return (gx.square() + gy.square()).sqrt().flatten(1).std(dim=1)


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
    count = round((last - first) / width)
    edges = [first + i * width for i in range(count + 1)]
    band = ((freq - first) / width).floor().long()
    inside = (band >= 0) & (band < count)
    sums = torch.zeros(count, device=y.device).index_add_(0, band[inside], white[inside])
    bins = torch.bincount(band[inside], minlength=count).clamp_min(1)
    levels = sums / bins
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
