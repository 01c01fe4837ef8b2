"""Cuts: shot transitions, hard cuts and fades, from every decoded frame in time order.

The decode stage's dense grid (`sampling.dense_fps`) puts at least 8 frames a second of the
whole video in front of this filter. On the device each frame shrinks to a thumbnail
(`thumb_width` pixels wide, area-averaged where the frames already are, so on a GPU only the
numbers below leave it) and gives: the change from the frame before in hue, saturation and
value, scored as PySceneDetect's ContentDetector scores it (mean absolute difference on the
0..255 scale, hue circular, the three averaged); its mean luma and colour spread (the largest
channel's standard deviation); and an 8x8 grid of mean colours. On the host, once per video:

- a *fade* runs through blank frames (darker than `dark_level` or flatter than `flat_level`)
  with pictures on both sides: one transition at the middle of the blank run, and no cut is
  called on the ramps down to it or up from it;
- a *cut* is a pair whose score reaches `threshold` and `ratio` times the median score of its
  neighbours within `neighbours_s` (an adaptive threshold: fast motion raises the median,
  scaled to each pair's time gap), placed halfway between the two frames;
- a *cross-fade* (also kind `fade`) shows on the colour grid: across a span of up to
  `max_fade_s` most cells change and the mean change reaches `blend_level` and
  `blend_ratio` times the change across the spans before and after it (in which each shot
  only moves); it is placed where the picture is halfway between the two shots;
- no two transitions lie closer than `min_shot_s`; the stronger one stays.

Row: `count`, `times` (seconds), `kinds` (`cut` / `fade`), `max_distance` (the largest pair
score, ContentDetector's scale) and `segments` (transitions per sliding window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqf.errors import ConfigError
from vqf.filters.base import register
from vqf.filters.frames import (
    DENSE,
    FrameFilter,
    FrameLayout,
    Pixels,
    check_range,
    segment_map,
)

if TYPE_CHECKING:
    import torch

GRID = 8  # cells per side of the colour grid
CELLS = [f"cell{k}" for k in range(GRID * GRID * 3)]
CELL_SHARE = 0.5  # share of grid cells a cross-fade must change


@dataclass(frozen=True)
class CutsOptions:
    threshold: float = 27.0  # pair score (0..255) a cut must reach: ContentDetector's default
    ratio: float = 3.0  # ... and this many times its neighbours' median score
    neighbours_s: float = 0.5  # seconds either side whose pairs make that median
    min_shot_s: float = 0.5  # no two transitions closer than this
    dark_level: float = 0.05  # a frame darker than this (mean luma 0..1) is blank
    flat_level: float = 0.02  # ... and one whose colour spread (0..1) is under this
    blend_level: float = 20.0  # mean grid-cell change (0..255) across a cross-fade
    blend_ratio: float = 2.0  # ... and this many times the change across the spans beside it
    max_fade_s: float = 2.0  # longest cross-fade looked for
    thumb_width: int = 64  # thumbnail width the scores are measured on

    def __post_init__(self):
        check_range("cuts", "threshold", self.threshold, high=255.0)
        check_range("cuts", "ratio", self.ratio, low=1.0, high=100.0)
        check_range("cuts", "neighbours_s", self.neighbours_s, low=0.05, high=10.0)
        check_range("cuts", "min_shot_s", self.min_shot_s, high=60.0)
        check_range("cuts", "dark_level", self.dark_level)
        check_range("cuts", "flat_level", self.flat_level)
        check_range("cuts", "blend_level", self.blend_level, high=255.0)
        check_range("cuts", "blend_ratio", self.blend_ratio, low=1.0, high=100.0)
        check_range("cuts", "max_fade_s", self.max_fade_s, low=0.25, high=10.0)
        if not 8 <= self.thumb_width <= 512:
            raise ConfigError(
                f"filters.cuts.options.thumb_width = {self.thumb_width} is out of range",
                hint="use 8 to 512 pixels",
            )


@register
class CutsFilter(FrameFilter):
    name = "cuts"
    reads = DENSE
    keys = {"frames": "cuts"}
    Options = CutsOptions

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        import torch
        import torch.nn.functional as F

        rgb = pixels.rgb
        height = max(1, round(self.options.thumb_width * rgb.shape[2] / rgb.shape[3]))
        size = (height, self.options.thumb_width)
        thumb = pixels.with_prev("rgb", lambda x: F.interpolate(x, size=size, mode="area"))
        # in 8-bit levels, as PySceneDetect's OpenCV sees frames: the hue of a near-grey float
        # pixel swings with the last bit of its channels, and so would the distances
        hsv = hsv255(thumb.mul(255.0).round_().div_(255.0))
        change = (hsv[1:] - hsv[:-1]).abs()
        hue = torch.minimum(change[:, 0], 180.0 - change[:, 0])  # hue is an angle
        pair = torch.stack([hue, change[:, 1], change[:, 2]], dim=1).mean(dim=(2, 3))
        if pixels.prev_rgb is None:  # a video's first frame follows nothing
            pair = torch.cat([pair.new_full((1, 3), float("nan")), pair])
        own = thumb[-pixels.rgb.shape[0] :]
        r, g, b = own[:, 0], own[:, 1], own[:, 2]
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        grid = F.adaptive_avg_pool2d(own, GRID).flatten(1) * 255.0
        out = {
            "hue": pair[:, 0],
            "sat": pair[:, 1],
            "val": pair[:, 2],
            "luma": luma.mean(dim=(1, 2)),
            "spread": own.flatten(2).std(dim=2, correction=0).amax(dim=1),
        }
        out.update(zip(CELLS, grid.unbind(1), strict=True))
        return out

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        opts, times = self.options, layout.times
        score = (features["hue"] + features["sat"] + features["val"]) / 3.0  # [i]: i-1 -> i
        score[:1] = np.nan
        blank = (features["luma"] < opts.dark_level) | (features["spread"] < opts.flat_level)
        quiet = np.zeros(len(times), bool)  # frames no cut may be called at
        found = self._fades(blank, features["luma"], times, quiet)
        found += self._cuts(score, times, quiet)
        grid = np.stack([features[c] for c in CELLS], axis=1)
        found += self._blends(grid, score, times, quiet)
        transitions = spaced(found, opts.min_shot_s)
        counts = [sum(s <= t < e for t, _ in transitions) for _, s, e, _ in layout.segments]
        finite = score[np.isfinite(score)]
        return {
            "count": len(transitions),
            "times": [round(float(t), 3) for t, _ in transitions],
            "kinds": [kind for _, kind in transitions],
            "max_distance": round(float(finite.max()), 2) if len(finite) else 0.0,
            "segments": {
                key: {**window, "count": int(window["count"])}
                for key, window in segment_map(layout, counts, "count").items()
            },
        }

    def _fades(self, blank, luma, times, quiet) -> list[tuple[float, float, str]]:
        """Runs of blank frames between pictures, one fade each; marks them and their ramps
        quiet. A blank opening or ending is no transition (a cut out of it still is)."""
        out = []
        for first, last in blank_runs(blank):
            quiet[first : last + 1] = True
            if first > 0 and last < len(times) - 1:
                lo, hi = ramp(luma, first, last, times, self.options.max_fade_s)
                quiet[lo : hi + 1] = True
                out.append((np.inf, (times[first] + times[last]) / 2, "fade"))
        return out

    def _cuts(self, score, times, quiet) -> list[tuple[float, float, str]]:
        """Pairs over the fixed and the adaptive threshold: (strength, seconds, 'cut')."""
        opts = self.options
        # pairs lie unevenly apart; change grows with the gap, but slower than in proportion
        # (shake swings back, texture saturates): neighbours are scaled by its square root
        gap = np.sqrt(np.maximum(np.diff(times, prepend=times[:1]), 1e-6))
        rate = score / gap
        out = []
        for i in np.flatnonzero(score >= opts.threshold):
            if quiet[i] and quiet[i - 1]:
                continue  # inside a fade: its blank run is the one transition
            near = np.abs(times - times[i]) <= opts.neighbours_s
            near[i] = False
            rates = rate[near & np.isfinite(rate)]
            baseline = float(np.median(rates)) * gap[i] if len(rates) else 0.0
            if score[i] >= opts.ratio * baseline:
                strength = score[i] / max(baseline, opts.threshold / opts.ratio)
                out.append((strength, (times[i - 1] + times[i]) / 2, "cut"))
        return out

    def _blends(self, grid, score, times, quiet) -> list[tuple[float, float, str]]:
        """Cross-fades: a change of the whole grid across a span, which the spans beside it
        (each inside one shot) do not show, with no hard cut or fade inside it."""
        opts, out = self.options, []
        if len(times) < 3:
            return out

        def at(t):  # the decoded frame at (or just after) each time
            return np.clip(np.searchsorted(times, t), 0, len(times) - 1)

        for span in spans_up_to(opts.max_fade_s):
            a, b = at(times - span / 2), at(times + span / 2)
            change = np.abs(grid[b] - grid[a]).reshape(len(times), -1, 3).mean(axis=2)
            level = change.mean(axis=1)
            share = (change >= opts.blend_level / 2).mean(axis=1)
            before = level[at(times - span)]
            after = level[at(times + span)]
            side = np.maximum(before, after)
            # both shots must show a span of their own beside the transition
            inside = (times - 1.5 * span >= times[0]) & (times + 1.5 * span <= times[-1])
            good = (
                inside
                & (level >= opts.blend_level)
                & (share >= CELL_SHARE)
                & (level >= opts.blend_ratio * side)
            )
            for i in np.flatnonzero(good):
                lo, hi = int(a[i]), int(b[i])
                if hi <= lo + 1 or quiet[lo : hi + 1].any():
                    continue  # a fade through black explains this change
                if np.nanmax(score[lo + 1 : hi + 1]) >= opts.threshold:
                    continue  # so does a hard cut
                t = halfway(grid[lo : hi + 1], times[lo : hi + 1])
                strength = level[i] / max(side[i], opts.blend_level / opts.blend_ratio)
                out.append((strength, t, "fade"))
        return out


def hsv255(rgb):
    """(N, 3, H, W) RGB 0..1 -> hue in degrees / 2 (0..180), saturation and value (0..255)."""
    import torch

    r, g, b = rgb.unbind(1)
    value, _ = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        (g - b) / safe,
        torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe),
    )
    hue = torch.where(chroma > 0, (hue * 30.0) % 180.0, torch.zeros_like(hue))
    sat = torch.where(value > 0, chroma / torch.where(value > 0, value, 1.0), 0.0)
    return torch.stack([hue, sat * 255.0, value * 255.0], dim=1)


def blank_runs(blank: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) positions of each maximal run of True."""
    edges = np.diff(np.concatenate([[0], blank.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def ramp(luma, first: int, last: int, times, most_s: float) -> tuple[int, int]:
    """The frames a blank run's fade spans: luma falls towards it and rises out of it."""
    lo = first
    while lo > 0 and luma[lo - 1] > luma[lo] and times[first] - times[lo - 1] <= most_s:
        lo -= 1
    hi = last
    while hi < len(luma) - 1 and luma[hi + 1] > luma[hi] and times[hi + 1] - times[last] <= most_s:
        hi += 1
    return lo, hi


def spans_up_to(most_s: float) -> list[float]:
    """Span lengths looked at for cross-fades: from 0.5 s up to `most_s`, each sqrt(2) longer."""
    spans, span = [], 0.5
    while span < most_s - 1e-6:
        spans.append(span)
        span *= 2**0.5
    return spans + [most_s]


def halfway(grid: np.ndarray, times: np.ndarray) -> float:
    """When the picture is halfway from the first frame's grid to the last one's."""
    step = grid[-1] - grid[0]
    along = (grid - grid[0]) @ step / max(float(step @ step), 1e-9)
    k = int(np.clip(np.searchsorted(np.maximum.accumulate(along), 0.5), 1, len(times) - 1))
    lo, hi = along[k - 1], along[k]
    w = 0.5 if hi <= lo else float(np.clip((0.5 - lo) / (hi - lo), 0.0, 1.0))
    return float(times[k - 1] + w * (times[k] - times[k - 1]))


def spaced(found: list[tuple[float, float, str]], min_gap: float) -> list[tuple[float, str]]:
    """The strongest transitions first, each kept when no kept one lies within `min_gap`."""
    kept: list[tuple[float, str]] = []
    for _, t, kind in sorted(found, key=lambda f: -f[0]):
        if all(abs(t - u) >= min_gap for u, _ in kept):
            kept.append((t, kind))
    return sorted(kept)
