"""Borders: uniform letterbox/pillarbox bars, measured on the detection frames, and the safe crop.

Only frames that show a picture judge the bars. A near-uniform frame (a fade's black, a flat
card) is skipped, and so is one that its own bars would leave less than `min_area` of (a
black title card with a line of text): either would pass for bars from edge to edge. On each
remaining frame a bar is the run of lines from an edge that keep to the edge line's colour
within `tolerance`, and a few lines more where the codec rings into it next to the picture; the video's bar on a side is the size at least
`agree` of those frames show, in the same colour on all of them, ending at that size on at
least half of them at a straight edge: the line past it differs from the bar along at least
`edge_share` of its length (median over those frames). A dark scene, a night sky or a black
background with something in it ends its dark run along a ragged line, so it is no bar. When every frame is
uniform the video is `blank`. The crop keeps what the bars leave, so the main decode reads
the picture only. Sizes are in displayed-frame pixels.
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
RINGING = 5.0  # how much further than `tolerance` a pixel of a ringing bar line may stray
RING_PX = 4  # displayed-frame pixels of a bar a codec may ring into, next to the picture


@dataclass(frozen=True)
class BordersOptions:
    tolerance: float = 0.03  # colour difference (0..1) a bar line may have: codec noise
    min_size: float = 0.02  # a bar thinner than this share of the side is ignored
    min_area: float = 0.25  # a crop keeping less than this share of the frame is not applied
    dark_level: float = 0.1  # bars whose colour is darker than this are called black
    margin: float = 0.02  # the crop reaches this share of the side past a bar: edges bleed
    flat_level: float = 0.02  # a frame whose colour spread (0..1) is under this shows nothing
    agree: float = 0.8  # share of the picture frames that must show a bar
    edge_share: float = 0.1  # share of the line past a bar that must differ from it

    def __post_init__(self):
        keys = ("tolerance", "min_size", "min_area", "dark_level", "margin", "flat_level")
        for key in (*keys, "edge_share"):
            check_range("borders", key, getattr(self, key))
        check_range("borders", "agree", self.agree, low=0.5)


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
            spread = picture.flatten(2).std(dim=2, correction=0).amax(dim=1)
            shown = picture[spread >= opts.flat_level]
            reach = math.ceil(RING_PX * pic_h / disp_h)  # in detection-frame lines
            runs_t = edge_runs(shown, tolerance=opts.tolerance, reach=reach)
            edges = edge_shares(shown, runs_t, tolerance=opts.tolerance).cpu().tolist()
            runs = runs_t.cpu().tolist()
            colours = edge_colours(shown).cpu().tolist()  # (F, 4, 3)
        if not runs:  # nothing but flat frames: a blank video has no bars, nothing to crop to
            return self._result(dict.fromkeys(SIDES, 0), None, disp_w, disp_h, blank=True)
        pictures = [
            k
            for k, (top, bottom, left, right) in enumerate(runs)
            if (pic_h - top - bottom) * (pic_w - left - right) >= opts.min_area * pic_h * pic_w
        ]
        spans = (pic_h, pic_h, pic_w, pic_w)
        bars = dict.fromkeys(SIDES, 0)
        for s, side in enumerate(SIDES):
            size = agreed([runs[k][s] for k in pictures], share=opts.agree)
            held = [colours[k][s] for k in pictures if runs[k][s] >= size]
            # a bar ends at the same line on most frames, at a straight edge of the picture;
            # a dark scene's run ends wherever something lit is, along a ragged line
            ending = [edges[k][s] for k in pictures if size <= runs[k][s] <= size + reach + 2]
            straight = 2 * len(ending) >= len(pictures) and median(ending) >= opts.edge_share
            if (
                size >= max(1, opts.min_size * spans[s])
                and steady(held, opts.tolerance)
                and straight
            ):
                bars[side] = size
        bar_colour = None
        if any(bars.values()):
            s = max(range(len(SIDES)), key=lambda s: bars[SIDES[s]])
            held = [colours[k][s] for k in pictures if runs[k][s] >= bars[SIDES[s]]]
            bar_colour = [sum(c[ch] for c in held) / len(held) for ch in range(3)]
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


def edge_runs(frames, *, tolerance: float, reach: int = 0):
    """(F, 3, H, W) -> (F, 4): per frame, how many lines from the top, bottom, left and right
    edge keep to the edge line's colour within `tolerance` (see `_run` for `reach`)."""
    import torch

    return torch.stack(
        [
            _run(frames, dim=2, tolerance=tolerance, reach=reach),
            _run(frames.flip(2), dim=2, tolerance=tolerance, reach=reach),
            _run(frames, dim=3, tolerance=tolerance, reach=reach),
            _run(frames.flip(3), dim=3, tolerance=tolerance, reach=reach),
        ],
        dim=1,
    )


def edge_shares(frames, runs, *, tolerance: float):
    """(F, 3, H, W), (F, 4) runs -> (F, 4): per frame and side, the share of the first line
    past the run whose colour differs from the edge line's by more than `tolerance`."""
    import torch

    f, _, h, w = frames.shape
    out = torch.zeros((f, 4), device=frames.device)
    for k in range(f):
        for s, (dim, flip) in enumerate(((1, False), (1, True), (2, False), (2, True))):
            view = frames[k].flip(dim) if flip else frames[k]
            at = int(runs[k, s])
            if at >= view.shape[dim]:
                continue
            edge = view.select(dim, 0).mean(dim=1, keepdim=True)  # (3, 1)
            line = view.select(dim, at)  # (3, L)
            out[k, s] = ((line - edge).abs().amax(dim=0) > tolerance).float().mean()
    return out


def median(values: list[float]) -> float:
    """The median of `values` (0 when there are none)."""
    if not values:
        return 0.0
    ranked = sorted(values)
    mid = len(ranked) // 2
    return ranked[mid] if len(ranked) % 2 else (ranked[mid - 1] + ranked[mid]) / 2


def edge_colours(frames):
    """(F, 3, H, W) -> (F, 4, 3): mean colour of the top, bottom, left and right edge lines."""
    import torch

    return torch.stack(
        [
            frames[:, :, 0, :].mean(dim=2),
            frames[:, :, -1, :].mean(dim=2),
            frames[:, :, :, 0].mean(dim=2),
            frames[:, :, :, -1].mean(dim=2),
        ],
        dim=1,
    )


def agreed(sizes: list[int], *, share: float) -> int:
    """The largest size that at least `share` of `sizes` reach (0 when there are none)."""
    if not sizes:
        return 0
    ranked = sorted(sizes, reverse=True)
    return int(ranked[max(0, math.ceil(share * len(ranked)) - 1)])


def steady(colours: list[list[float]], tolerance: float) -> bool:
    """True when the colours stay within `tolerance` of each other in every channel: a bar
    does not change between frames, a flat stretch of picture (sky, a wall) usually does."""
    if not colours:
        return True
    return all(
        max(c[ch] for c in colours) - min(c[ch] for c in colours) <= tolerance for ch in range(3)
    )


def _run(frames, *, dim: int, tolerance: float, reach: int):
    """Per frame: the leading lines along `dim` (2: rows, 3: columns) in the first line's colour.

    A bar line keeps every pixel within `tolerance` of that colour. Past the last such line
    a codec rings into the bar (its blocks straddle the edge of the picture): up to `reach`
    more lines count when they keep within RINGING times `tolerance` and within twice it on
    average, as a line of picture, even a dark one, does not for long."""
    import torch

    across = 3 if dim == 2 else 2
    edge = frames.narrow(dim, 0, 1).mean(dim=across, keepdim=True)  # the edge line's colour
    off = (frames - edge).abs().amax(dim=1)  # (F, H, W): largest channel difference
    mean, worst = off.mean(dim=across - 1), off.amax(dim=across - 1)  # (F, lines)
    core = (worst <= tolerance).long().cumprod(dim=1).sum(dim=1)
    rings = (mean <= 2 * tolerance) & (worst <= RINGING * tolerance)
    ringing = rings.long().cumprod(dim=1).sum(dim=1)
    return torch.where(core > 0, torch.minimum(ringing, core + reach), core)


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
