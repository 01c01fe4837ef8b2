"""`vqf report OUTPUTS`: one self-contained HTML page about a run's output table.

Counts, failures by type, verdicts by rule, a timeline strip per video with its shot
transitions (the cuts filter's hard cuts and fades) marked and the camera filter's label on
each window, and per filter: a histogram of
every score, the keep rate as a function of each threshold, and thumbnail strips of the
highest and lowest scoring videos and of those the filter dropped. Thumbnails are decoded with PyAV from each
row's `video_oss_url` when it is a local file and embedded as base64 JPEG; charts are inline
SVG, so the page needs no network when viewed. Thresholds come from the run's
`resolved_config.yaml` next to the outputs, or from `--recipe`.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vqf.decide import Rule, info_path, parse_rules

STRIP = 4  # videos per thumbnail strip
TIMELINES = 200  # videos whose transitions the page draws
TIMELINE_W, TIMELINE_H = 480, 40
FRAMES = 4  # frames per video thumbnail
THUMB_HEIGHT = 72


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vqf report", description=__doc__.splitlines()[0])
    p.add_argument("outputs", help="an output table: a directory of shards, *.jsonl or *.parquet")
    p.add_argument("--out", default="report.html", help="the HTML file to write")
    p.add_argument("--recipe", default=None, help="recipe whose thresholds to chart")
    args = p.parse_args(argv)
    path = write_report(args.outputs, out=args.out, recipe=args.recipe)
    print(f"wrote {path}")
    return 0


def write_report(outputs: str | Path, *, out: str | Path, recipe: str | Path | None = None) -> Path:
    """Reads `outputs`, writes the HTML report to `out` and returns its path."""
    rows = read_rows(str(outputs))
    rules = read_rules(Path(recipe) if recipe else _resolved_next_to(outputs))
    page = render(rows, rules=rules, title=f"vqf report: {outputs}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def read_rows(outputs: str) -> list[dict[str, Any]]:
    """Every output record with `info` and `result_info` parsed."""
    from vqf.schema import decode_record
    from vqf.tables import open_source

    source = open_source(outputs)
    return [decode_record(r) for r in source.read(start=0, count=source.count())]


def read_rules(path: Path | None) -> list[Rule]:
    """The thresholds of a recipe or resolved config; none when there is no such file."""
    import yaml

    if path is None or not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    filters = data.get("filters") or {}
    return [
        rule
        for name, spec in filters.items()
        if isinstance(spec, dict) and spec.get("enable", True)
        for rule in parse_rules(name, spec.get("thresholds") or {})
    ]


def _resolved_next_to(outputs: str | Path) -> Path | None:
    path = Path(str(outputs))
    folder = path if path.is_dir() else path.parent
    return folder / "resolved_config.yaml"


# -- what the rows say -------------------------------------------------------------------


def scalars(info: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of a row's info by dotted path; segment maps and lists are left out."""
    out: dict[str, float] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, bool):
            out[path] = float(node)
        elif isinstance(node, (int, float)) and math.isfinite(node):
            out[path] = float(node)
        elif isinstance(node, dict) and not any(k.isdigit() for k in node):
            for key, value in node.items():
                if key != "duration":
                    walk(value, f"{path}.{key}" if path else key)

    walk(info, "")
    return out


def primary(paths: list[str], key: str) -> str:
    """The score that orders a filter's thumbnails: its `score`, else `prob`, else the first."""
    for name in ("score", "prob", "mean_luma", "share", "count"):
        if f"{key}.{name}" in paths:
            return f"{key}.{name}"
    return paths[0]


def _key_owners() -> dict[str, str]:
    """Info key -> the filter that writes it, over every registered filter."""
    import vqf.filters  # noqa: F401  registers the built-in filters
    from vqf.filters import borders, cuts, exposure, motion, sharpness  # noqa: F401
    from vqf.filters.base import FILTERS

    return {key: name for name, cls in FILTERS.items() for key in cls.keys.values()}


# -- the page ----------------------------------------------------------------------------


def render(rows: list[dict[str, Any]], *, rules: list[Rule], title: str) -> str:
    """The whole HTML page."""
    good = [r for r in rows if r["result_info"].get("succeed") == "true"]
    scores = [scalars(r.get("info") or {}) for r in good]
    thumbs = Thumbnails()
    parts = [
        f"<h1>{_e(title)}</h1>",
        _counts(rows, good),
        _failures(rows),
        _reasons(good),
        _timelines(good),
    ]
    owners = _key_owners()
    by_key: dict[str, set[str]] = defaultdict(set)
    for s in scores:
        for path in s:
            by_key[path.split(".")[0]].add(path)
    for key in sorted(by_key):
        parts.append(
            _section(key, sorted(by_key[key]), good, scores, rules, owners.get(key, key), thumbs)
        )
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _counts(rows, good) -> str:
    decided = [r for r in good if "keep" in r["result_info"]]
    kept = sum(1 for r in decided if r["result_info"]["keep"])
    cells = [
        ("videos", len(rows)),
        ("scored", len(good)),
        ("failed", len(rows) - len(good)),
        ("decided", len(decided)),
        ("kept", kept),
        ("dropped", len(decided) - kept),
    ]
    items = "".join(f"<div class='count'><b>{n}</b><span>{_e(k)}</span></div>" for k, n in cells)
    return f"<section id='counts'><h2>Counts</h2><div class='counts'>{items}</div></section>"


def _failures(rows) -> str:
    errors = [
        r["result_info"].get("error") or {}
        for r in rows
        if r["result_info"].get("succeed") != "true"
    ]
    by_type = Counter(e.get("type", "?") for e in errors)
    lines = []
    for kind, n in by_type.most_common():
        example = next(e for e in errors if e.get("type", "?") == kind)
        lines.append(
            f"<tr><td>{_e(kind)}</td><td>{n}</td><td>{_e(example.get('stage', ''))}</td>"
            f"<td>{_e(str(example.get('message', ''))[:200])}</td></tr>"
        )
    table = "".join(lines) or "<tr><td colspan='4'>no failures</td></tr>"
    return (
        "<section id='failures'><h2>Failures by type</h2><table><tr><th>type</th><th>videos</th>"
        f"<th>stage</th><th>example</th></tr>{table}</table></section>"
    )


def _reasons(good) -> str:
    counts = Counter(
        reason.split(":")[0] for r in good for reason in r["result_info"].get("reasons") or []
    )
    lines = "".join(f"<tr><td>{_e(k)}</td><td>{n}</td></tr>" for k, n in counts.most_common())
    lines = lines or "<tr><td colspan='2'>no video dropped</td></tr>"
    return (
        "<section id='reasons'><h2>Dropped, by rule</h2><table><tr><th>rule</th><th>videos</th>"
        f"</tr>{lines}</table></section>"
    )


def _timelines(good) -> str:
    """One strip per video: its transitions marked where they fall, its camera label per window."""
    shown = [r for r in good if any(isinstance(_info(r).get(k), dict) for k in ("cuts", "camera"))]
    if not shown:
        return ""
    lines = []
    for row in shown[:TIMELINES]:
        cuts, camera = _info(row).get("cuts") or {}, _info(row).get("camera") or {}
        times = [float(t) for t in cuts.get("times") or []]
        kinds = list(cuts.get("kinds") or ["cut"] * len(times))
        windows = [
            (float(w["duration"][0]), float(w["duration"][1]), str(w["camera"].get("label", "")))
            for w in (camera.get("segments") or {}).values()
            if "duration" in w and isinstance(w.get("camera"), dict)
        ]
        ends = [w["duration"][1] for w in (cuts.get("segments") or {}).values() if "duration" in w]
        length = max([*ends, *times, *(e for _, e, _ in windows), 0.0])
        count = len(times) if cuts else "-"
        lines.append(
            f"<tr><td>{_e(row['video_id'])}</td><td>{count}</td>"
            f"<td>{timeline_svg(times, kinds, seconds=length, windows=windows)}</td></tr>"
        )
    more = len(shown) - TIMELINES
    note = f"<p class='same'>{more} more videos not drawn</p>" if more > 0 else ""
    return (
        "<section id='transitions'><h2>Transitions</h2><p class='same'>"
        "<span class='cut'>&#9646;</span> hard cut <span class='fade'>&#9646;</span> fade; "
        "shaded: the camera's motion per window (static, pan, tilt, zoom, shaky, mixed)</p>"
        "<table><tr><th>video</th><th>transitions</th><th>timeline</th></tr>"
        f"{''.join(lines)}</table>{note}</section>"
    )


def _info(row: dict[str, Any]) -> dict[str, Any]:
    return row.get("info") or {}


CAMERA_COLOURS = {
    "static": "#e4e4e4", "pan": "#bfe3c4", "tilt": "#c4d9f2", "zoom": "#f5deb0",
    "shaky": "#f4b6b6", "mixed": "#d9c3ee",
}  # fmt: skip


def _camera_colour(label: str) -> str:
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
            f"{_e(text)}</text>"
            if x1 - x0 >= 6 * len(text)
            else ""
        )
        bands.append(
            f"<rect class='camera {_e(label)}' x='{x0:.1f}' y='{top}' width='{x1 - x0:.1f}' "
            f"height='{h - 12 - top}' fill='{_camera_colour(label)}'><title>camera {_e(label)} "
            f"{start:.1f}-{end:.1f} s</title></rect>{words}"
        )
    marks = []
    for t, kind in zip(times, kinds, strict=False):
        x = x_at(t)
        colour = "#e08a00" if kind == "fade" else "#c33"
        marks.append(
            f"<line class='mark {_e(kind)}' x1='{x:.1f}' x2='{x:.1f}' y1='2' y2='{h - 12}' "
            f"stroke='{colour}' stroke-width='3'><title>{_e(kind)} at {t:.2f} s</title></line>"
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


def _section(key, paths, good, scores, rules, owner, thumbs) -> str:
    charts, constant = [], []
    for path in paths:
        values = np.array([s[path] for s in scores if path in s])
        rule = next((r for r in rules if ".".join(info_path(r)) == path), None)
        if rule is None and len(values) and values.min() == values.max():
            constant.append(f"{_e(path)} = {values[0]:g}")  # a flat chart says less than this
            continue
        charts.append(
            f"<figure><figcaption>{_e(path)} (n={len(values)})</figcaption>"
            f"{histogram_svg(values, marker=rule.bound if rule else None)}"
            f"<figcaption>keep rate vs threshold ({_rule_text(rule, path)})</figcaption>"
            f"{_keep_curve(values, rule)}</figure>"
        )
    order = primary(paths, key)
    ranked = sorted(
        ((s[order], r) for s, r in zip(scores, good, strict=True) if order in s), key=lambda t: t[0]
    )
    strips = [
        _strip(f"highest {order}", [(v, r) for v, r in ranked[::-1][:STRIP]], order, thumbs),
        _strip(f"lowest {order}", [(v, r) for v, r in ranked[:STRIP]], order, thumbs),
    ]
    dropped = [
        (s.get(order), r)
        for s, r in zip(scores, good, strict=True)
        if any(x.startswith(f"{owner}.") for x in r["result_info"].get("reasons") or [])
    ]
    strips.append(_strip(f"dropped by {owner}", dropped, order, thumbs, reasons=True))
    return (
        f"<section class='filter' id='f-{_e(key)}'><h2>{_e(key)}</h2>"
        f"<div class='charts'>{''.join(charts)}</div>{_constant(constant)}{''.join(strips)}"
        "</section>"
    )


def _constant(items: list[str]) -> str:
    return f"<p class='same'>same for every video: {', '.join(items)}</p>" if items else ""


def _rule_text(rule: Rule | None, path: str) -> str:
    """HTML: which way the keep-rate curve counts, and the rule it marks."""
    if rule is None:
        return f"keep when {_e(path)} &ge; t"
    sign = "&ge;" if rule.op == "min" else "&le;"
    return f"rule {_e(rule.name)}: keep when {sign} {rule.bound:g}"


def _keep_curve(values: np.ndarray, rule: Rule | None) -> str:
    if len(values) == 0:
        return ""
    lo, hi = float(values.min()), float(values.max())
    bound = rule.bound if rule else None
    if bound is not None:
        lo, hi = min(lo, bound), max(hi, bound)
    ts = np.linspace(lo, hi, 41) if hi > lo else np.array([lo])
    if bound is not None:  # on the grid, so the marked keep rate is exact
        ts = np.unique(np.append(ts, bound))
    keep_min = rule is None or rule.op == "min"
    rate = [float(np.mean(values >= t) if keep_min else np.mean(values <= t)) for t in ts]
    return curve_svg(ts, np.array(rate), marker=bound)


def _strip(title, items, order, thumbs, *, reasons=False) -> str:
    cards = []
    for value, row in items[: STRIP * 2 if reasons else STRIP]:
        img = thumbs.get(row)
        picture = (
            f"<img alt='frames' src='data:image/jpeg;base64,{img}'>"
            if img
            else "<div class='noimg'>no frames</div>"
        )
        why = ""
        if reasons:
            why = "<br>".join(_e(x) for x in row["result_info"].get("reasons") or [])
            why = f"<div class='why'>{why}</div>"
        shown = "-" if value is None else f"{value:.4g}"
        cards.append(
            f"<div class='card'>{picture}<div>{_e(row['video_id'])}</div>"
            f"<div>{_e(order)} = {shown}</div>{why}</div>"
        )
    inner = "".join(cards) or "<div class='none'>none</div>"
    return f"<h3>{_e(title)}</h3><div class='strip'>{inner}</div>"


class Thumbnails:
    """Base64 JPEG strips of a few frames per video, decoded once per video."""

    def __init__(self, *, frames: int = FRAMES, height: int = THUMB_HEIGHT):
        self.frames = frames
        self.height = height
        self._cache: dict[str, str | None] = {}

    def get(self, row: dict[str, Any]) -> str | None:
        url = str(row.get("video_oss_url") or "")
        if url not in self._cache:
            self._cache[url] = self._make(url)
        return self._cache[url]

    def _make(self, url: str) -> str | None:
        path = Path(url[7:] if url.startswith("file://") else url)
        if "://" in url and not url.startswith("file://") or not path.is_file():
            return None  # remote or gone: the report still shows the scores
        try:
            pictures = sample_frames(path, count=self.frames, height=self.height)
        except Exception:  # a file the run could not decode either: no thumbnail
            return None
        if not pictures:
            return None
        return base64.b64encode(jpeg(np.concatenate(pictures, axis=1))).decode()


def sample_frames(path: Path, *, count: int, height: int) -> list[np.ndarray]:
    """`count` frames spread over the video, as (height, w, 3) RGB, w keeping the aspect."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        duration = duration or (container.duration or 0) / 1e6
        for t in (np.arange(count) + 0.5) * duration / count:
            # seek to the keyframe before t, then decode up to t: a few frames, not the video
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t - 1e-3:
                    break
            if frame is not None:
                width = max(2, round(frame.width * height / frame.height) // 2 * 2)
                out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    return out


def jpeg(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB as JPEG bytes, encoded by FFmpeg's MJPEG encoder."""
    from fractions import Fraction

    import av

    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb[: h // 2 * 2, : w // 2 * 2])
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = rgb.shape[1], rgb.shape[0]
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.options = {"qmin": "2", "qmax": "5"}
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


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


PAD, PLOT_W, PLOT_H = 6, 260, 90


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
        f"<text x='{PAD + PLOT_W / 2}' y='{h - 2}' font-size='10' text-anchor='middle'>{_e(note)}</text>"
    )
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>{content}{axis}{text}</svg>"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:20px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:4px}
h3{font-size:14px;margin:12px 0 4px}
.counts{display:flex;gap:12px}.count{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.count b{display:block;font-size:22px}.count span{color:#666}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #eee;padding:6px}
figcaption{font-size:12px;color:#444}
.strip{display:flex;flex-wrap:wrap;gap:10px}.card{font-size:12px;max-width:330px}
.card img{display:block;height:72px}.noimg{height:72px;width:120px;background:#eee;color:#888;
display:flex;align-items:center;justify-content:center}.why{color:#a00}.same{color:#666;font-size:12px}.none{color:#888}
span.cut{color:#c33}span.fade{color:#e08a00}svg.timeline{display:block}
"""
