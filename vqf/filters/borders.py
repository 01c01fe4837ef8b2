"""Borders: uniform letterbox/pillarbox bars, measured on the detection frames, and the safe crop.

A row (column) belongs to a bar when, on every detection frame, its pixels stay within
`tolerance` of the row's mean colour and that colour does not change between frames; bars
grow inwards from each edge of the picture. The crop keeps what the bars leave, so the main
decode reads the picture only. Sizes are in displayed-frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqf.config import FilterConfig
from vqf.errors import ConfigError
from vqf.filters.base import DetectionFilter, DetectResult, register
from vqf.filters.frames import check_range

if TYPE_CHECKING:
    import torch

SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class BordersOptions:
    tolerance: float = 0.03  # colour spread (0..1) a bar row may have: codec noise, not picture
    min_size: float = 0.02  # a bar thinner than this share of the side is ignored
    min_area: float = 0.25  # a crop keeping less than this share of the frame is not applied
    dark_level: float = 0.1  # bars whose colour is darker than this are called black
    margin: float = 0.02  # the crop reaches this share of the side past a bar: edges bleed

    def __post_init__(self):
        for key in ("tolerance", "min_size", "min_area", "dark_level", "margin"):
            check_range("borders", key, getattr(self, key))


@register
class BordersFilter(DetectionFilter):
    name = "borders"
    labels = ()
    keys = {"detect": "borders"}
    default_model = ""
    Options = BordersOptions

    def __init__(self, *, spec: FilterConfig, bank=None):
        super().__init__(spec=spec, bank=bank)
        if self.model_name:
            raise ConfigError(
                f"filters.borders.model = {self.model_name!r}, but borders uses no model",
                hint="remove filters.borders.model",
            )

    def detect(self, frames: torch.Tensor, *, letterbox) -> DetectResult:
        """Bars of one video from its letterboxed detection frames (0..1)."""
        import torch

        opts = self.options
        disp_w, disp_h = letterbox.width, letterbox.height
        pic_w, pic_h = letterbox.resized
        with torch.inference_mode():
            picture = frames[:, :, :pic_h, :pic_w].float()
            rows = uniform_lines(picture, dim=3, tolerance=opts.tolerance)  # (pic_h,) per row
            cols = uniform_lines(picture, dim=2, tolerance=opts.tolerance)  # (pic_w,) per column
            flags = torch.cat([rows, cols]).cpu().tolist()
        rows, cols = flags[:pic_h], flags[pic_h:]
        if all(rows):  # one flat colour: a blank video has no bars, and nothing to crop to
            return self._result(dict.fromkeys(SIDES, 0), None, disp_w, disp_h, blank=True)
        bars = {
            "top": _run(rows),
            "bottom": _run(rows[::-1]),
            "left": _run(cols),
            "right": _run(cols[::-1]),
        }
        for side, span in (("top", pic_h), ("bottom", pic_h), ("left", pic_w), ("right", pic_w)):
            if bars[side] < opts.min_size * span:
                bars[side] = 0
        bar_colour = None
        if any(bars.values()):
            bar_colour = _edge_colour(picture, bars)
        relative = _crop(bars, pic_w=pic_w, pic_h=pic_h, margin=opts.margin)
        if relative and (relative[2] - relative[0]) * (relative[3] - relative[1]) < opts.min_area:
            relative = None
        pixels = {
            side: math.ceil(n * (disp_h / pic_h if side in ("top", "bottom") else disp_w / pic_w))
            for side, n in bars.items()
        }
        return self._result(pixels, relative, disp_w, disp_h, colour=bar_colour)

    def _result(self, bars, relative, width, height, *, blank=False, colour=None) -> DetectResult:
        kept = (width - bars["left"] - bars["right"]) * (height - bars["top"] - bars["bottom"])
        crop = None
        if relative:
            crop = [
                round(relative[0] * width),
                round(relative[1] * height),
                round(relative[2] * width),
                round(relative[3] * height),
            ]
        info: dict[str, Any] = {
            **bars,
            "share": round(1.0 - max(kept, 0) / (width * height), 4),
            "colour": self._colour_name(colour),
            "blank": blank,
            "crop": crop,
        }
        return DetectResult(info={self.keys["detect"]: info}, crop=relative)

    def _colour_name(self, colour) -> str | None:
        if colour is None:
            return None
        return "black" if max(colour) < self.options.dark_level else "uniform"


def uniform_lines(picture, *, dim: int, tolerance: float):
    """Per row (dim=3) or column (dim=2) of (D, 3, H, W) frames: True where it is one steady colour."""
    mean = picture.mean(dim=dim, keepdim=True)  # each line's colour, per frame and channel
    spread = (picture - mean).abs().amax(dim=(0, 1, dim))
    # the colour must also hold from frame to frame: bars do not change, pictures do
    level = mean.squeeze(dim)
    drift = (level.amax(dim=0) - level.amin(dim=0)).amax(dim=0)
    return (spread <= tolerance) & (drift <= tolerance)


def _run(flags: list[bool]) -> int:
    """Length of the leading run of True."""
    n = 0
    for flag in flags:
        if not flag:
            break
        n += 1
    return n


def _crop(bars: dict[str, int], *, pic_w: int, pic_h: int, margin: float):
    """Relative (x0, y0, x1, y1) inside the bars, or None when there are none."""
    if not any(bars.values()):
        return None
    # past each bar by one line plus `margin`: chroma subsampling and the resize blend the
    # bar's edge into the picture, and those lines are neither bar nor clean picture
    span = {"top": pic_h, "bottom": pic_h, "left": pic_w, "right": pic_w}
    top, bottom, left, right = (
        (bars[s] + 1 + margin * span[s]) / span[s] if bars[s] else 0.0 for s in SIDES
    )
    if top + bottom >= 1.0 or left + right >= 1.0:
        return None
    return left, top, 1.0 - right, 1.0 - bottom


def _edge_colour(picture, bars: dict[str, int]) -> list[float]:
    """Mean RGB of the thickest bar."""
    side = max(bars, key=bars.__getitem__)
    n = bars[side]
    region = {
        "top": picture[:, :, :n, :],
        "bottom": picture[:, :, -n:, :],
        "left": picture[:, :, :, :n],
        "right": picture[:, :, :, -n:],
    }[side]
    return region.mean(dim=(0, 2, 3)).cpu().tolist()
