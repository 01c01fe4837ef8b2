"""A rank's stage spans as a Chrome/Perfetto trace, a per-stage table and the bottleneck.

Spans are `RankStats.spans`: (stage, label, start, end) with wall-clock seconds. A label is
the video id of a per-video stage, or the comma-separated ids of a batch. Stages named
`backbone:<model>`, `head:<filter>`, `aggregate` and `preprocess` are nested inside `model`
and `decode`; they are shown under their parent and never compete with it for the bottleneck.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Span = tuple[str, str, float, float]

# The order of the data flow, for tables; stages not listed sort after these by name.
STAGE_ORDER = (
    "fetch",
    "probe",
    "detect",
    "decode",
    "preprocess",
    "model",
    "backbone",
    "head",
    "aggregate",
    "write",
)
PARENTS = {"preprocess": "decode", "backbone": "model", "head": "model", "aggregate": "model"}


def parent_of(stage: str) -> str | None:
    """The stage a nested stage runs inside (`backbone:vjepa` -> `model`), or None."""
    return PARENTS.get(stage.split(":", 1)[0])


def _order(stage: str) -> tuple[int, str]:
    kind = stage.split(":", 1)[0]
    return (STAGE_ORDER.index(kind) if kind in STAGE_ORDER else len(STAGE_ORDER), stage)


def _videos(label: str) -> list[str]:
    return [v for v in label.split(",") if v]


# -- the trace ---------------------------------------------------------------------------------
def chrome_trace(
    spans_by_rank: dict[int, list[Span]], *, devices: dict[int, str] | None = None
) -> dict:
    """Chrome trace events: one process per rank, one track per stage, one "X" event per span.

    Spans of one stage that overlap (a worker pool) go on numbered tracks `fetch #2`, ...,
    because a trace viewer draws overlapping events of one track as if nested.
    """
    devices = devices or {}
    t0 = min((s[2] for spans in spans_by_rank.values() for s in spans), default=0.0)
    events: list[dict[str, Any]] = []
    for rank, spans in sorted(spans_by_rank.items()):
        name = f"rank {rank}" + (f" ({devices[rank]})" if rank in devices else "")
        events.append({"name": "process_name", "ph": "M", "pid": rank, "args": {"name": name}})
        tracks: dict[str, list[float]] = defaultdict(list)  # track name -> end of its last span
        tids: dict[str, int] = {}
        for stage, label, start, end in sorted(spans, key=lambda s: (_order(s[0]), s[2])):
            lanes = tracks[stage]
            lane = next((i for i, free_at in enumerate(lanes) if free_at <= start), len(lanes))
            if lane == len(lanes):
                lanes.append(end)
            lanes[lane] = end
            track = stage if lane == 0 else f"{stage} #{lane + 1}"
            if track not in tids:
                tids[track] = len(tids)
                events.append(
                    {
                        "name": "thread_name",
                        "ph": "M",
                        "pid": rank,
                        "tid": tids[track],
                        "args": {"name": track},
                    }
                )
                events.append(
                    {
                        "name": "thread_sort_index",
                        "ph": "M",
                        "pid": rank,
                        "tid": tids[track],
                        "args": {"sort_index": tids[track]},
                    }
                )
            videos = _videos(label)
            events.append(
                {
                    "name": (
                        videos[0]
                        if len(videos) == 1
                        else f"{stage} x{len(videos)}"
                        if videos
                        else stage
                    ),
                    "cat": stage,
                    "ph": "X",
                    "ts": round((start - t0) * 1e6, 1),
                    "dur": round(max(end - start, 0.0) * 1e6, 1),
                    "pid": rank,
                    "tid": tids[track],
                    "args": {"videos": videos} if videos else {},
                }
            )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_json(path: str | Path, data: Any) -> Path:
    """Writes `data` as JSON, atomically (a viewer never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
    return path


# -- the per-stage table -----------------------------------------------------------------------
@dataclass(frozen=True)
class StageRow:
    """One stage of the run: time spent, throughput while busy, share and the wait in front."""

    stage: str
    parent: str | None
    seconds: float  # summed over spans (over threads, when a pool runs the stage)
    items: int
    items_per_s: float  # while busy
    share: float  # of the summed time of all top-level stages
    busy: float  # of the wall time times the threads that run the stage
    wait_s: float | None  # mean time a video waited in front of the stage; None when unknown

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wall_seconds(spans: list[Span]) -> float:
    """From the first span's start to the last span's end."""
    if not spans:
        return 0.0
    return max(s[3] for s in spans) - min(s[2] for s in spans)


def busy_intervals(spans: list[Span], stage: str) -> list[tuple[float, float]]:
    """The merged time intervals during which any thread was in `stage` (prefix match)."""
    pieces = sorted((s[2], s[3]) for s in spans if s[0] == stage or s[0].startswith(stage + ":"))
    merged: list[list[float]] = []
    for start, end in pieces:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap_seconds(spans: list[Span], first: str, second: str) -> float:
    """Seconds of wall time during which both stages were busy at once."""
    a, b = busy_intervals(spans, first), busy_intervals(spans, second)
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def queue_waits(spans: list[Span]) -> dict[str, float]:
    """Mean seconds a video waited between finishing one top-level stage and starting the next."""
    by_video: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for stage, label, start, end in spans:
        if parent_of(stage) is None:
            for video in _videos(label):
                by_video[video].append((start, end, stage))
    waits: dict[str, list[float]] = defaultdict(list)
    for steps in by_video.values():
        steps.sort()
        for (_, prev_end, _), (start, _, stage) in zip(steps, steps[1:], strict=False):
            waits[stage].append(max(start - prev_end, 0.0))
    return {stage: sum(w) / len(w) for stage, w in waits.items()}


def stage_rows(
    spans: list[Span],
    *,
    stage_seconds: dict[str, float] | None = None,
    stage_items: dict[str, int] | None = None,
    threads: dict[str, int] | None = None,
) -> list[StageRow]:
    """The per-stage table in data-flow order.

    `stage_seconds` / `stage_items` (the snapshot's totals) take precedence over sums of the
    spans; `threads` says how many threads run a stage (default 1), for its busy fraction.
    """
    seconds: dict[str, float] = defaultdict(float)
    items: dict[str, int] = defaultdict(int)
    for stage, label, start, end in spans:
        seconds[stage] += end - start
        items[stage] += max(len(_videos(label)), 1)
    seconds.update(stage_seconds or {})
    items.update(stage_items or {})
    threads = threads or {}
    wall = wall_seconds(spans)
    waits = queue_waits(spans)
    top_total = sum(v for k, v in seconds.items() if parent_of(k) is None) or 1.0
    rows = []
    for stage in sorted(seconds, key=_order):
        secs, n = seconds[stage], int(items.get(stage, 0))
        parent = parent_of(stage)
        rows.append(
            StageRow(
                stage=stage,
                parent=parent,
                seconds=secs,
                items=n,
                items_per_s=n / secs if secs > 0 else 0.0,
                share=secs / (seconds.get(parent, 0.0) or top_total)
                if parent
                else secs / top_total,
                busy=secs / (wall * threads.get(stage, 1)) if wall > 0 else 0.0,
                wait_s=waits.get(stage),
            )
        )
    return rows


def bottleneck(rows: list[StageRow]) -> str:
    """One sentence naming the stage the others wait on: the busiest top-level stage."""
    top = [r for r in rows if r.parent is None and r.seconds > 0]
    if not top:
        return "No stage ran, so there is no bottleneck to name."
    worst = max(top, key=lambda r: r.busy)
    sentence = (
        f"The bottleneck is {worst.stage}: busy {worst.busy:.0%} of the run "
        f"({worst.items_per_s:.2f} items/s while busy), so the other stages wait on it"
    )
    if worst.wait_s is not None:
        sentence += f"; videos waited {worst.wait_s:.2f} s on average in the queue in front of it"
    inner = [r for r in rows if r.parent == worst.stage]
    if inner:
        big = max(inner, key=lambda r: r.seconds)
        sentence += f"; inside it, {big.stage} takes {big.share:.0%} of its time"
    return sentence + "."
