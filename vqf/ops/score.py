"""`vqf score VIDEO...`: a few files judged by the same engine as `vqf run`, shown as a table.

The videos become a list input (one path a line) and an output folder in a temporary
directory; `run_job` judges them exactly as a `vqf run` of that table would, and the rows it
wrote are read back and shown, one line a video: the verdict and its reasons, then each
filter's headline value (a label and its probability, a score, segment labels compactly).

Without `--recipe` the recipe is the demo's weight-free filters with their thresholds, plus
any learned filter of the demo whose model has a real checkpoint configured (`path` set, not
`init: random`).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from vqf.config import Recipe, load_recipe
from vqf.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml"
SKIP_KEYS = ("abnormal_region_info",)  # lists of boxes: too long for a table cell


def default_recipe_data() -> dict[str, Any]:
    """The demo's recipe, its learned filters kept only where their model has a checkpoint."""
    from vqf.config import FilterConfig
    from vqf.filters import FILTERS

    if not DEMO.is_file():
        raise ConfigError(f"the default recipe {str(DEMO)!r} is missing", hint="pass --recipe")
    data = yaml.safe_load(DEMO.read_text()) or {}
    models = data.get("models") or {}
    filters, used = {}, set()
    for name, spec in (data.get("filters") or {}).items():
        need = FILTERS.get(name).needs(name, FilterConfig(**(spec or {})))
        if need is None:
            filters[name] = spec
            continue
        model = models.get(need.model) or {}
        if model.get("path") and model.get("init") != "random":
            filters[name] = spec
            used.add(need.model)
    data.update(name="score", filters=filters)
    data["models"] = {k: v for k, v in models.items() if k in used}
    data.pop("demo", None)
    return data


def load_score_recipe(path: str | None, *, workdir: Path, overrides: list[str]) -> Recipe:
    """The recipe to score with, its tables and outputs pointed into `workdir`."""
    if path is None:
        path = workdir / "score.yaml"
        Path(path).write_text(yaml.safe_dump(default_recipe_data(), sort_keys=False))
    fixed = [
        f"tables={workdir / 'videos.txt'}",
        f"outputs={workdir / 'out'}",
        "demo.generate=false",
        f"storage.cache_dir={workdir / 'cache'}",
    ]
    return load_recipe(path, overrides=[*overrides, *fixed])


def score(videos: list[str], *, recipe: str | None = None, overrides=()) -> list[dict]:
    """The decoded output row of each of `videos`, in the order given."""
    from vqf.engine.launch import run_job
    from vqf.schema import decode_record
    from vqf.tables import open_source

    if not videos:
        raise ConfigError("no videos to score", hint="vqf score VIDEO [VIDEO...]")
    lines = [v if "://" in v else str(Path(v).absolute()) for v in videos]
    with tempfile.TemporaryDirectory(prefix="vqf-score-") as tmp:
        workdir = Path(tmp)
        (workdir / "videos.txt").write_text("".join(f"{line}\n" for line in lines))
        resolved = load_score_recipe(recipe, workdir=workdir, overrides=list(overrides))
        run_job(resolved, ranks=1, status=None)
        source = open_source(str(workdir / "out"))
        rows = [decode_record(r) for r in source.read(start=0, count=source.count())]
    # a video's row by its id, which is its line; a repeated video has one row a repeat
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["video_id"], []).append(row)
    ordered = []
    for video, line in zip(videos, lines, strict=True):
        key = line.removeprefix("oss://").partition("/")[2] if line.startswith("oss://") else line
        row = by_id[key].pop(0)
        ordered.append(dict(row, video=video))
    return ordered


# -- the table ------------------------------------------------------------------------------


def verdict(row: dict) -> str:
    ri = row.get("result_info") or {}
    if ri.get("succeed") != "true":
        return "failed"
    if "keep" not in ri:
        return "scored"
    return "keep" if ri["keep"] else "drop"


def reasons(row: dict) -> str:
    ri = row.get("result_info") or {}
    if ri.get("succeed") != "true":
        error = ri.get("error") or {}
        return f"{error.get('type', '?')}: {error.get('message', '')}"
    return "; ".join(str(r) for r in ri.get("reasons") or [])


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def cell(value: Any) -> str:
    """A filter's object in a few characters: `label 0.93`, `score=0.012`, `normal x5, low x1`."""
    if isinstance(value, dict) and "label" in value and "prob" in value:
        return f"{value['label']} {value['prob']:.2f}"
    if isinstance(value, dict) and value and all(k.isdigit() for k in value):
        labels = Counter(
            inner["label"]
            for window in value.values()
            for inner in window.values()
            if isinstance(inner, dict) and "label" in inner
        )
        return ", ".join(f"{label} x{n}" for label, n in labels.most_common()) or "-"
    if isinstance(value, dict):
        scalars = [
            (k, v)
            for k, v in value.items()
            if isinstance(v, (int, float, bool)) and not isinstance(v, str)
        ]
        first = [kv for kv in scalars if kv[0] in ("score", "count", "share", "bits_per_pixel")]
        shown = (first or scalars)[:1]
        return " ".join(f"{k}={_number(v)}" for k, v in shown) or "-"
    if value is None:
        return "-"
    return _number(value)


def columns(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key in row.get("info") or {}:
            if key not in keys and key not in SKIP_KEYS:
                keys.append(key)
    return sorted(keys)


def render(rows: list[dict], *, console=None) -> None:
    """Prints the rows as a rich table on `console` (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="vqf score", show_lines=True)
    table.add_column("video", overflow="fold")
    table.add_column("verdict", min_width=7)
    table.add_column("reasons", overflow="fold")
    keys = columns(rows)
    for key in keys:
        table.add_column(key.removesuffix("_filter"), overflow="fold")
    styles = {"keep": "green", "drop": "red", "failed": "bold red", "scored": ""}
    for row in rows:
        v = verdict(row)
        info = row.get("info") or {}
        table.add_row(
            row["video"],
            f"[{styles[v]}]{v}[/]" if styles[v] else v,
            reasons(row),
            *(cell(info.get(k)) for k in keys),
        )
    console.print(table)
    random = sorted({m for r in rows for m in (r.get("result_info") or {}).get("random_init", [])})
    if random:
        console.print(f"models at random initialisation (scores meaningless): {', '.join(random)}")


def cmd_score(args) -> int:
    rows = score(args.videos, recipe=args.recipe, overrides=args.overrides)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "video"} for r in rows], indent=2))
    else:
        render(rows)
    return 0 if all(verdict(r) != "failed" for r in rows) else 1
