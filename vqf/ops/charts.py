"""Inline SVG charts for the report page: a video's timeline of transitions and camera
windows, a histogram of scores, and the keep rate over a threshold. No scripts, no network."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

TIMELINE_W, TIMELINE_H = 480, 40
PAD, PLOT_W, PLOT_H = 6, 260, 90


CAMERA_COLOURS = {
    "static": "#e4e4e4", "pan": "#bfe3c4", "tilt": "#c4d9f2", "zoom": "#f5deb0",
    "shaky": "#f4b6b6", "mixed": "#d9c3ee",
}  # fmt: skip


def camera_colour(label: str) -> str:
    return CAMERA_COLOURS.get(label.split("_")[0], "#eeeeee")


def timeline_svg(
    times: list[float],
    kinds: list[str],
    *,
    seconds: float,
    windows: list[tuple[float, float, str]] = (),
) -> str:
    """An inline SVG strip of `seconds` with a mark at each transition: red for a hard cut,
    orange for a fade; each mark's title gives its time. `windows` (start, end, camera label)
    shade the strip behind them, each window from its start to the next one's."""
    w, h, pad = TIMELINE_W, TIMELINE_H, 4
    span = max(seconds, max(times, default=0.0), 1e-6)

    def x_at(t: float) -> float:
        return pad + (w - 2 * pad) * t / span

    bands, top = [], (h - 12) / 2 + 3  # under the axis
    ordered = sorted(windows)
    for i, (start, end, label) in enumerate(ordered):
        stop = ordered[i + 1][0] if i + 1 < len(ordered) else end
        x0, x1 = x_at(start), x_at(max(stop, start))
        text = label.replace("_", " ")
        words = (
            f"<text x='{(x0 + x1) / 2:.1f}' y='{h - 14}' font-size='9' text-anchor='middle'>"
            f"{escape(text)}</text>"
            if x1 - x0 >= 6 * len(text)
            else ""
        )
        bands.append(
            f"<rect class='camera {escape(label)}' x='{x0:.1f}' y='{top}' width='{x1 - x0:.1f}' "
            f"height='{h - 12 - top}' fill='{camera_colour(label)}'><title>camera {escape(label)} "
            f"{start:.1f}-{end:.1f} s</title></rect>{words}"
        )
    marks = []
    for t, kind in zip(times, kinds, strict=False):
        x = x_at(t)
        colour = "#e08a00" if kind == "fade" else "#c33"
        marks.append(
            f"<line class='mark {escape(kind)}' x1='{x:.1f}' x2='{x:.1f}' y1='2' y2='{h - 12}' "
            f"stroke='{colour}' stroke-width='3'><title>{escape(kind)} at {t:.2f} s</title></line>"
        )
    axis = (
        f"<rect x='{pad}' y='{(h - 12) / 2 - 2}' width='{w - 2 * pad}' height='4' fill='#ccc'/>"
        f"<text x='{pad}' y='{h - 1}' font-size='10'>0 s</text>"
        f"<text x='{w - pad}' y='{h - 1}' font-size='10' text-anchor='end'>{span:.1f} s</text>"
    )
    return (
        f"<svg class='timeline' xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>"
        f"{''.join(bands)}{axis}{''.join(marks)}</svg>"
    )


def histogram_svg(values: np.ndarray, *, bins: int = 20, marker: float | None = None) -> str:
    """An inline SVG histogram of `values`, with an optional vertical marker (a threshold)."""
    if len(values) == 0:
        return "<svg width='1' height='1'></svg>"
    lo, hi = float(values.min()), float(values.max())
    if marker is not None:
        lo, hi = min(lo, marker), max(hi, marker)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    bw = PLOT_W / bins
    bars = "".join(
        f"<rect x='{PAD + i * bw:.1f}' y='{PAD + PLOT_H * (1 - c / top):.1f}' "
        f"width='{max(bw - 1, 1):.1f}' height='{PLOT_H * c / top:.1f}' fill='#4a7ab5'/>"
        for i, c in enumerate(counts)
        if c
    )
    return _frame(bars + _marker(marker, lo, hi), lo, hi, f"max {top}")


def curve_svg(xs: np.ndarray, ys: np.ndarray, *, marker: float | None = None) -> str:
    """An inline SVG line of ys (0..1) over xs, with an optional vertical marker."""
    lo, hi = float(xs.min()), float(xs.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    points = " ".join(
        f"{PAD + PLOT_W * (x - lo) / (hi - lo):.1f},{PAD + PLOT_H * (1 - y):.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    line = f"<polyline points='{points}' fill='none' stroke='#2a8a4a' stroke-width='2'/>"
    label = ""
    if marker is not None and len(xs):
        at = float(np.interp(marker, xs, ys))
        label = f"keep {at:.0%} at {marker:g}"
    return _frame(line + _marker(marker, lo, hi), lo, hi, label or "keep rate 0..1")


def _marker(value: float | None, lo: float, hi: float) -> str:
    if value is None:
        return ""
    x = PAD + PLOT_W * (value - lo) / (hi - lo)
    return f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{PAD}' y2='{PAD + PLOT_H}' stroke='#c33' stroke-dasharray='4 2'/>"


def _frame(content: str, lo: float, hi: float, note: str) -> str:
    w, h = PLOT_W + 2 * PAD, PLOT_H + 2 * PAD + 14
    axis = f"<line x1='{PAD}' x2='{PAD + PLOT_W}' y1='{PAD + PLOT_H}' y2='{PAD + PLOT_H}' stroke='#999'/>"
    text = (
        f"<text x='{PAD}' y='{h - 2}' font-size='10'>{lo:.4g}</text>"
        f"<text x='{PAD + PLOT_W}' y='{h - 2}' font-size='10' text-anchor='end'>{hi:.4g}</text>"
        f"<text x='{PAD + PLOT_W / 2}' y='{h - 2}' font-size='10' text-anchor='middle'>{escape(note)}</text>"
    )
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>{content}{axis}{text}</svg>"


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)
