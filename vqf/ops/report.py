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
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vqf.decide import Rule, info_path, parse_rules
from vqf.ops.charts import curve_svg, escape, histogram_svg, timeline_svg
from vqf.ops.thumbnails import Thumbnails

STRIP = 4  # videos per thumbnail strip
TIMELINES = 200  # videos whose transitions the page draws


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
        f"<h1>{escape(title)}</h1>",
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
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
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
    items = "".join(
        f"<div class='count'><b>{n}</b><span>{escape(k)}</span></div>" for k, n in cells
    )
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
            f"<tr><td>{escape(kind)}</td><td>{n}</td><td>{escape(example.get('stage', ''))}</td>"
            f"<td>{escape(str(example.get('message', ''))[:200])}</td></tr>"
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
    lines = "".join(f"<tr><td>{escape(k)}</td><td>{n}</td></tr>" for k, n in counts.most_common())
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
            f"<tr><td>{escape(row['video_id'])}</td><td>{count}</td>"
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


def _section(key, paths, good, scores, rules, owner, thumbs) -> str:
    charts, constant = [], []
    for path in paths:
        values = np.array([s[path] for s in scores if path in s])
        rule = next((r for r in rules if ".".join(info_path(r)) == path), None)
        if rule is None and len(values) and values.min() == values.max():
            constant.append(f"{escape(path)} = {values[0]:g}")  # a flat chart says less than this
            continue
        charts.append(
            f"<figure><figcaption>{escape(path)} (n={len(values)})</figcaption>"
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
        f"<section class='filter' id='f-{escape(key)}'><h2>{escape(key)}</h2>"
        f"<div class='charts'>{''.join(charts)}</div>{_constant(constant)}{''.join(strips)}"
        "</section>"
    )


def _constant(items: list[str]) -> str:
    return f"<p class='same'>same for every video: {', '.join(items)}</p>" if items else ""


def _rule_text(rule: Rule | None, path: str) -> str:
    """HTML: which way the keep-rate curve counts, and the rule it marks."""
    if rule is None:
        return f"keep when {escape(path)} &ge; t"
    sign = "&ge;" if rule.op == "min" else "&le;"
    return f"rule {escape(rule.name)}: keep when {sign} {rule.bound:g}"


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
            why = "<br>".join(escape(x) for x in row["result_info"].get("reasons") or [])
            why = f"<div class='why'>{why}</div>"
        shown = "-" if value is None else f"{value:.4g}"
        cards.append(
            f"<div class='card'>{picture}<div>{escape(row['video_id'])}</div>"
            f"<div>{escape(order)} = {shown}</div>{why}</div>"
        )
    inner = "".join(cards) or "<div class='none'>none</div>"
    return f"<h3>{escape(title)}</h3><div class='strip'>{inner}</div>"


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
