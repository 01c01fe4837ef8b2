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
- `detail`: how far up the frequency range the picture holds detail (1.0 = up to the pixel
  grid, 0.25 = a quarter of it), from the frequency at which the luma spectrum, whitened by f^2
  (natural pictures fall as 1/f^2), first drops `cutoff_db` under its highest level at lower
  frequencies, along rows and along columns, the sharper axis counting; blur, a soft lens, a
  soft encode and an upscale all lower it;
- `upscale`: the factor the video was enlarged by (1.0 = not enlarged), only where the frames'
  lines fit a coarser sampling grid exactly (`vqf.filters.resampling`): when detail stops
  short of the pixel grid along both axes, each is searched for the grid it was resampled
  from, over factors from half to 1.6 times what its spectrum suggests. A blurred video has
  low `detail` and no upscale. `grid_fit` is the best grid's residual over its neighbours'
  (an upscale under `fit_max`, None where no grid was searched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from vqf.config import FilterConfig
from vqf.errors import ConfigError
from vqf.filters.base import DetectionFilter, DetectResult, register
from vqf.filters.frames import LUMA, check_range, rounded
from vqf.filters.resampling import FIT_MAX, best_grid

if TYPE_CHECKING:
    import torch

    from vqf.video.plane import DetectFrames

FLAT_STD = 2.0  # luma spread (0..255) under which a frame shows nothing to measure
EDGE_RANGE = 6.0  # an edge line whose luma varies less than this on every frame is a bar
BANDS = (0.02, 0.5, 0.025)  # whitened-spectrum bands: first edge, last edge, width (cycles/px)
PLATEAU = 3  # bands that give the low-frequency level
MIN_SIDE = 64  # pixels a side needs for a spectrum
SOFT = 1.2  # an axis whose spectrum suggests a factor under this is not searched for a grid
# factors searched, as multiples of the spectrum's: a soft source reads higher than its factor,
# a sharpened upscale lower
SEARCH = (0.5, 1.6)
MAX_SIDE = 1280  # a larger frame is measured on its centre, at its own resolution (cost)


@dataclass(frozen=True)
class SharpnessOptions:
    blur_max: float = 0.6  # a score under this marks the video blurry (see the README's table)
    cutoff_db: float = 9.0  # drop under the spectrum's peak so far where detail ends
    fit_max: float = FIT_MAX  # a grid fitting this much better than its neighbours: an upscale

    def __post_init__(self):
        check_range("sharpness", "blur_max", self.blur_max, high=8.0)
        check_range("sharpness", "cutoff_db", self.cutoff_db, low=1.0, high=40.0)
        check_range("sharpness", "fit_max", self.fit_max, low=0.05, high=1.0)


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
            y, spans = picture(native)
            spread = y.flatten(1).std(dim=1)
            y = y[spread >= FLAT_STD]
            if len(y) == 0 or min(y.shape[1:]) < 3:
                info = {"score": 0.0, "si": 0.0, "detail": None, "upscale": None}
                info |= {"grid_fit": None, "blurry": False, "frames": 0}
                return DetectResult(info={self.keys["detect"]: info}, crop=None)
            si = sobel_spread(y)
            ratio = si / contrast(y).clamp_min(FLAT_STD)
            score, si_mean = (float(v) for v in torch.stack([ratio.mean(), si.mean()]).cpu())
            found = resolution(y, spans, opts=self.options)
        info: dict[str, Any] = {
            "score": rounded(score, 4),
            "si": rounded(si_mean, 2),
            "detail": None if found.detail is None else rounded(found.detail, 3),
            "upscale": None if found.upscale is None else rounded(found.upscale, 2),
            "grid_fit": None if found.grid_fit is None else rounded(found.grid_fit, 3),
            "blurry": score < self.options.blur_max,
            "frames": len(y),
        }
        return DetectResult(info={self.keys["detect"]: info}, crop=None)


def picture(native: torch.Tensor) -> tuple[torch.Tensor, tuple[Span, Span]]:
    """(D, H, W, 3) uint8 RGB -> the luma (0..255) of the part measured: the picture without
    its bars (uniform edge lines), at most MAX_SIDE pixels a side around its centre; and where
    that part lies along the columns and along the rows (`Span`)."""
    top, bottom, left, right = bar_widths(native)
    full_h, full_w = native.shape[1:3]
    h, w = full_h - top - bottom, full_w - left - right
    dy, dx = top + max(0, (h - MAX_SIDE) // 2), left + max(0, (w - MAX_SIDE) // 2)
    y = luma255(native[:, dy : dy + min(h, MAX_SIDE), dx : dx + min(w, MAX_SIDE)])
    return y, (Span(dx, full_w, (left, right)), Span(dy, full_h, (top, bottom)))


class Span(NamedTuple):
    """Where the measured part lies along one axis of the frame."""

    start: int  # its first pixel, counted from the frame's edge
    frame: int  # the frame's length
    bars: tuple[int, int]  # bar lines trimmed before and after it

    def grids(self) -> list[tuple[int, int]]:
        """(start, length) of the measured part in each picture an upscaler may have enlarged:
        the frame, and where it has bars, the picture inside them (a codec's ringing can leave
        the bar's last line uneven, so also one line further in)."""
        before, after = self.bars
        if not (before or after):
            return [(self.start, self.frame)]
        firsts = (before, before + 1) if before else (0,)
        lasts = (after, after + 1) if after else (0,)
        inside = [(self.start - a, self.frame - a - b) for a in firsts for b in lasts]
        return [(self.start, self.frame), *inside]


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


def bar_widths(native: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the edge lines of `native` (D, H, W, 3) uint8 whose luma is
    flat on every frame (bars), at most 45% a side. One frame's luma at a time: a 4K frame's
    float copy is 33 MB, all of them together hundreds."""
    import torch

    h, w = native.shape[1:3]
    rows = [torch.full((h,), v, device=native.device) for v in (math.inf, -math.inf)]
    cols = [torch.full((w,), v, device=native.device) for v in (math.inf, -math.inf)]
    for frame in native:
        y = luma255(frame.unsqueeze(0))[0]
        rows = [torch.minimum(rows[0], y.amin(dim=1)), torch.maximum(rows[1], y.amax(dim=1))]
        cols = [torch.minimum(cols[0], y.amin(dim=0)), torch.maximum(cols[1], y.amax(dim=0))]
    flat_rows = (rows[1] - rows[0]) < EDGE_RANGE  # (H,)
    flat_cols = (cols[1] - cols[0]) < EDGE_RANGE  # (W,)

    def run(flat) -> int:  # leading flat lines
        return int(flat.long().cumprod(dim=0).sum())

    top, bottom = min(run(flat_rows), int(0.45 * h)), min(run(flat_rows.flip(0)), int(0.45 * h))
    left, right = min(run(flat_cols), int(0.45 * w)), min(run(flat_cols.flip(0)), int(0.45 * w))
    return top, bottom, left, right


def sobel_spread(y: torch.Tensor) -> torch.Tensor:
    """(D, H, W) luma -> (D,) standard deviation of the Sobel gradient magnitude (P.910 SI),
    over the pixels with all eight neighbours (no made-up border pixels)."""
    across = y[:, :, 2:] - y[:, :, :-2]
    gx = across[:, :-2] + 2 * across[:, 1:-1] + across[:, 2:]
    down = y[:, 2:] - y[:, :-2]
    gy = down[:, :, :-2] + 2 * down[:, :, 1:-1] + down[:, :, 2:]
    return (gx.square() + gy.square()).sqrt().flatten(1).std(dim=1)


class Resolution(NamedTuple):
    detail: float | None  # how far up the frequency range detail reaches (1.0 = to the grid)
    grid_fit: float | None  # the best grid's residual over its neighbours' (None: no search)
    upscale: float | None  # the factor enlarged by (1.0 = not enlarged)


def resolution(y: torch.Tensor, spans: tuple[Span, Span], *, opts: SharpnessOptions) -> Resolution:
    """`Resolution` of the measured part `y` (D, H, W); all None where a side is too short
    for a spectrum. When detail stops short of the pixel grid along both axes, each
    is searched for the grid it was resampled from; the surer fit (`grid_fit`, lower = surer)
    gives the factor when under `fit_max` (a video enlarged along one axis only, such as
    anamorphic 960x1080, reads 1.0). `grid_fit` is None where nothing was searched."""
    if min(y.shape[1:]) < MIN_SIDE:
        return Resolution(None, None, None)
    axes = ((y, spans[0]), (y.transpose(1, 2), spans[1]))
    tops = [cutoff_frequency(lines, cutoff_db=opts.cutoff_db) for lines, _ in axes]
    best = (math.inf, 1.0)
    if 0.5 / max(tops) >= SOFT:  # both axes soft: an upscale enlarges both
        for (lines, span), top in zip(axes, tops, strict=True):
            factors = (0.5 / top * SEARCH[0], 0.5 / top * SEARCH[1])
            for start, length in span.grids():
                best = min(best, best_grid(lines, start=start, span=length, factors=factors))
    fit = best[0] if math.isfinite(best[0]) else None
    upscale = best[1] if fit is not None and fit < opts.fit_max else 1.0
    return Resolution(2 * max(tops), fit, upscale)


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
