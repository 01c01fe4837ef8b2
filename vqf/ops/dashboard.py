"""The live dashboard: the whole job on rank 0, drawn with rich from every rank's snapshot.

`render(snaps)` is a pure function from the ranks' snapshots (what `RankStats.snapshot()`
publishes through the torch.distributed store) to a rich renderable, so it can be tested by
rendering into a recording console. `Dashboard` keeps it on screen with `rich.live.Live`;
`make_status` picks it on a terminal and the plain `StatusLine` anywhere else (CI, log files).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter, defaultdict
from typing import Any, Literal, TextIO

from vqf.ops.status import StatusLine, summarize

MB = 1024**2
RECENT_FAILURES = 5

# Snapshot keys the rank fills when it can: "storage" (tier -> hits, misses, errors, bytes,
# seconds), "gpu" (gpu_reading()), counters "video_seconds" and "fallback_cpu_decode".


# -- numbers ---------------------------------------------------------------------------------
def job_summary(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """`summarize` plus what the final table shows: successes, fallbacks, video-hours per GPU-hour."""
    out = summarize(snaps)
    counters = Counter()
    for s in snaps:
        counters.update(s.get("counters", {}))
    gpu_hours = sum(s.get("elapsed_s", 0.0) for s in snaps if _is_gpu(s)) / 3600
    device_hours = sum(s.get("elapsed_s", 0.0) for s in snaps) / 3600
    video_hours = counters.get("video_seconds", 0.0) / 3600
    out.update(
        succeeded=int(counters.get("succeeded", 0)),
        fallbacks=int(counters.get("fallback_cpu_decode", 0)),
        seek_fallbacks=int(counters.get("detect_seek_fallbacks", 0)),
        video_hours=video_hours,
        gpu_hours=gpu_hours,
        # per GPU-hour when the job ran on GPUs; on CPU ranks the same ratio per rank-hour
        video_hours_per_gpu_hour=video_hours / gpu_hours if gpu_hours > 0 else None,
        video_hours_per_rank_hour=video_hours / device_hours if device_hours > 0 else None,
    )
    return out


def storage_summary(snaps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per storage tier over all ranks: hits, misses, errors, hit rate and MB/s while fetching."""
    sums: dict[str, Counter] = defaultdict(Counter)
    for s in snaps:
        for tier, values in (s.get("storage") or {}).items():
            sums[tier].update({k: float(v) for k, v in values.items()})
    out = {}
    for tier, v in sums.items():
        tries = v["hits"] + v["misses"] + v["errors"]
        if tries == 0:
            continue
        out[tier] = {
            "hits": v["hits"],
            "misses": v["misses"],
            "errors": v["errors"],
            "hit_rate": v["hits"] / tries,
            "mb_per_s": v["bytes"] / MB / v["seconds"] if v["seconds"] > 0 else 0.0,
        }
    return out


def recent_failures(snaps: list[dict[str, Any]], *, limit: int = RECENT_FAILURES) -> list[tuple]:
    """The latest few failures as (rank, video_id, type, message), newest last."""
    rows = []
    for s in snaps:
        rows += [(s.get("rank", 0), *f) for f in s.get("recent_failures", [])[-limit:]]
    return rows[-limit:]


def _is_gpu(snap: dict[str, Any]) -> bool:
    return str(snap.get("device", "")).startswith("cuda")


# -- GPU readings (NVML, when nvidia-ml-py is installed) -----------------------------------
_nvml_lock = threading.Lock()
_nvml: Any = None  # the pynvml module once initialised, False when unavailable


def _nvml_module():
    global _nvml
    with _nvml_lock:
        if _nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml = pynvml
            except Exception:  # not installed, no driver: the dashboard shows n/a
                _nvml = False
        return _nvml or None


def _nvml_handle(nvml, device: str):
    """The NVML handle of torch's cuda:N. NVML counts every GPU; torch counts those
    CUDA_VISIBLE_DEVICES lets it see, given there by index or by UUID (GPU-..., MIG-...)."""
    index = int(device.partition(":")[2] or 0)
    visible = [
        v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()
    ]
    if index < len(visible):
        if visible[index].isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(visible[index]))
        if visible[index].startswith(("GPU-", "MIG-")):
            return nvml.nvmlDeviceGetHandleByUUID(visible[index])
    return nvml.nvmlDeviceGetHandleByIndex(index)


def gpu_reading(device: str) -> dict[str, float] | None:
    """Utilisation %, memory GiB and NVDEC utilisation % of a cuda device; None without NVML."""
    if not device.startswith("cuda"):
        return None
    nvml = _nvml_module()
    if nvml is None:
        return None
    try:
        handle = _nvml_handle(nvml, device)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        nvdec = nvml.nvmlDeviceGetDecoderUtilization(handle)[0]
    except Exception:
        return None
    return {
        "util": float(util.gpu),
        "mem_used_gb": mem.used / 1024**3,
        "mem_total_gb": mem.total / 1024**3,
        "nvdec": float(nvdec),
    }


# -- rendering -------------------------------------------------------------------------------
def render(snaps: list[dict[str, Any]]):
    """The dashboard for the ranks' latest snapshots, as one rich renderable."""
    from rich.console import Group

    parts = [_progress(snaps), _ranks_table(snaps)]
    failures = _failures_table(snaps)
    if failures is not None:
        parts.append(failures)
    storage = _storage_table(snaps)
    if storage is not None:
        parts.append(storage)
    return Group(*parts)


def summary_table(snaps: list[dict[str, Any]]):
    """The end-of-job table: rows in and written, failures by type, wall time, throughput."""
    from rich.table import Table

    s = job_summary(snaps)
    table = Table(title="vqf: job summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows in", str(s["total"]))
    table.add_row("already done (skipped)", str(s["skipped"]))
    table.add_row("rows written", str(s["written"]))
    table.add_row("succeeded", str(s["succeeded"]))
    table.add_row("failed", str(s["failed"]))
    for kind, n in sorted(s["failures"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {kind}", str(n))
    table.add_row("wall time", _duration(s["elapsed_s"]))
    table.add_row("videos/s", f"{s['videos_per_s']:.2f}")
    table.add_row("ranks", str(s["ranks"]))
    table.add_row("CPU decode fallbacks", str(s["fallbacks"]))
    table.add_row("detection seek fallbacks", str(s["seek_fallbacks"]))
    if s["video_hours_per_gpu_hour"] is not None:
        table.add_row("video-hours per GPU-hour", f"{s['video_hours_per_gpu_hour']:.2f}")
    elif s["video_hours_per_rank_hour"] is not None:
        table.add_row("video-hours per GPU-hour", "n/a (CPU ranks)")
        table.add_row("video-hours per rank-hour", f"{s['video_hours_per_rank_hour']:.2f}")
    return table


def _progress(snaps):
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    s = job_summary(snaps)
    done = s["written"] + s["skipped"]
    eta = _duration(s["eta_s"]) if s["eta_s"] is not None else "?"
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        "[bold]vqf[/]",
        ProgressBar(total=max(s["total"], 1), completed=done, width=30),
        f"{done}/{s['total']} rows",
        f"{s['videos_per_s']:.2f} videos/s",
        f"ETA {eta}",
    )
    details = (
        f"    elapsed {_duration(s['elapsed_s'])}   failed {s['failed']}   "
        f"CPU-decode fallbacks {s['fallbacks']}   seek fallbacks {s['seek_fallbacks']}"
    )
    return Group(grid, Text(details))


def _ranks_table(snaps):
    from rich.table import Table

    table = Table(title="ranks", title_justify="left")
    # short headers: the table fits an 80-column terminal
    for name in (
        "rank",
        "device",
        "done",
        "videos/s",
        "queues",
        "CPU dec",
        "GPU",
        "GPU mem",
        "NVDEC",
    ):
        table.add_column(name, justify="left" if name in ("device", "queues") else "right")
    for s in sorted(snaps, key=lambda s: s.get("rank", 0)):
        counters = s.get("counters", {})
        done = s.get("written", 0) + counters.get("rows_skipped_done", 0)
        queues = " ".join(f"{k} {v}" for k, v in sorted(s.get("queues", {}).items())) or "-"
        gpu = s.get("gpu") or {}
        table.add_row(
            str(s.get("rank", 0)),
            str(s.get("device", "?")),
            f"{done}/{s.get('total', 0)}",
            f"{s.get('videos_per_s', 0.0):.3g}",
            queues,
            str(int(counters.get("fallback_cpu_decode", 0))),
            f"{gpu['util']:.0f}%" if "util" in gpu else "n/a",
            f"{gpu['mem_used_gb']:.1f}/{gpu['mem_total_gb']:.0f} GiB"
            if "mem_used_gb" in gpu
            else "n/a",
            f"{gpu['nvdec']:.0f}%" if "nvdec" in gpu else "n/a",
        )
    return table


def _failures_table(snaps):
    from rich.console import Group
    from rich.table import Table

    s = summarize(snaps)
    if not s["failures"]:
        return None
    by_type = Table(title=f"failures: {s['failed']}", title_justify="left")
    by_type.add_column("type")
    by_type.add_column("count", justify="right")
    for kind, n in sorted(s["failures"].items(), key=lambda kv: -kv[1]):
        by_type.add_row(kind, str(n))
    latest = Table(title="latest failures", title_justify="left")
    for name in ("rank", "video", "type", "message"):
        latest.add_column(name, overflow="fold" if name == "message" else "ellipsis")
    for rank, video_id, kind, message in recent_failures(snaps):
        latest.add_row(str(rank), str(video_id), kind, message)
    return Group(by_type, latest)


def _storage_table(snaps):
    from rich.table import Table

    tiers = storage_summary(snaps)
    if not tiers:
        return None
    table = Table(title="storage tiers", title_justify="left")
    for name in ("tier", "hits", "misses", "errors", "hit rate", "MB/s"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    for tier, v in tiers.items():
        table.add_row(
            tier,
            f"{v['hits']:.0f}",
            f"{v['misses']:.0f}",
            f"{v['errors']:.0f}",
            f"{v['hit_rate']:.0%}",
            f"{v['mb_per_s']:.1f}",
        )
    return table


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# -- on screen -------------------------------------------------------------------------------
class Dashboard:
    """Keeps `render(snaps)` on screen; the final call leaves it there and prints the summary.

    Same call signature as StatusLine. Nothing unpicklable is held before the first call, so
    it can be handed to a spawned rank 0.
    """

    def __init__(self, *, console=None):
        self.console = console
        self._live = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def __call__(self, snaps: list[dict[str, Any]], *, final: bool) -> None:
        if self._live is None:
            self._start(snaps)
        self._live.update(render(snaps), refresh=True)
        if final:
            self._stop()
            self.console.print(summary_table(snaps))

    def _start(self, snaps) -> None:
        from rich.console import Console
        from rich.live import Live

        if self.console is None:
            self.console = Console(stderr=True)
        before = sys.stderr
        self._live = Live(render(snaps), console=self.console, auto_refresh=False)
        self._live.start()
        # Log handlers hold the real stderr; while Live runs, sys.stderr is its proxy, which
        # prints log lines above the dashboard instead of through it.
        if sys.stderr is not before:
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and handler.stream in (
                    before,
                    sys.__stderr__,
                ):
                    self._handlers.append((handler, handler.setStream(sys.stderr)))

    def _stop(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []
        self._live.stop()

    def __getstate__(self) -> dict[str, Any]:
        return {"console": None, "_live": None, "_handlers": []}


def make_status(*, mode: Literal["auto", "rich", "plain"] = "auto", stream: TextIO | None = None):
    """The progress display: the dashboard on a terminal, the plain status line elsewhere."""
    from vqf.errors import ConfigError

    if mode not in ("auto", "rich", "plain"):
        raise ConfigError(
            f"dashboard mode {mode!r} is not allowed", hint="allowed: auto, rich, plain"
        )
    # stderr itself is left for the display to look up when it draws: a display that holds
    # no stream can be pickled into a spawned rank 0
    own = stream if stream is not None and stream is not sys.stderr else None
    target = own or sys.stderr
    tty = hasattr(target, "isatty") and target.isatty()
    if mode == "rich" or (mode == "auto" and tty and os.environ.get("TERM") != "dumb"):
        from rich.console import Console

        return Dashboard(console=Console(file=own) if own is not None else None)
    return StatusLine(own)
