"""`vqf profile`: the real pipeline on a sample, where the time goes, and how far from the floors.

The engine runs in this process on the first `--videos` rows with stage spans kept. Out come a
per-stage table with the bottleneck named in one sentence, a Chrome/Perfetto trace
(`trace.json`), a JSON summary for comparing runs (`profile.json`) and, on a GPU, the floors of
DESIGN.md section 8 computed for the videos at hand next to what was achieved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vqf.bench.floors import VideoLoad, compute_floors, video_load
from vqf.bench.trace import (
    StageRow,
    bottleneck,
    chrome_trace,
    overlap_seconds,
    stage_rows,
    wall_seconds,
    write_json,
)
from vqf.config import Recipe
from vqf.ops.dashboard import gpu_reading


# -- GPU sampling ------------------------------------------------------------------------------
class GpuSampler:
    """Reads GPU and NVDEC utilisation every `every_s` seconds in a thread while the block runs
    (NVML, when present), each reading with its monotonic time `t`."""

    def __init__(self, device: str, *, every_s: float = 0.25):
        self.device, self.every_s = device, every_s
        self.readings: list[dict[str, float]] = []
        self.ended = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vqf-gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        if gpu_reading(self.device) is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.monotonic()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            reading = gpu_reading(self.device)
            if reading is not None:
                self.readings.append({**reading, "t": time.monotonic()})

    def summary(
        self, *, last_s: float | None = None, since: float | None = None
    ) -> dict[str, float] | None:
        """Mean and max utilisation, NVDEC utilisation and memory, over the block's last
        `last_s` seconds, or from the monotonic time `since` on (all of it by default); None
        without readings."""
        rows = [
            r
            for r in list(self.readings)
            if (last_s is None or r["t"] >= self.ended - last_s)
            and (since is None or r["t"] >= since)
        ]
        if not rows:
            return None
        out = {"samples": float(len(rows))}
        for key in ("util", "nvdec", "mem_used_gb"):
            out[f"{key}_mean"] = sum(r[key] for r in rows) / len(rows)
            out[f"{key}_max"] = max(r[key] for r in rows)
        return out


# -- the run -----------------------------------------------------------------------------------
def _profiled_rank(recipe: Recipe, device: str):
    """A Rank that keeps every video it prepared (row and plan), for the floors and the
    baseline of exactly these videos."""
    from vqf.engine.rank import Rank

    rank = Rank(recipe, rank=0, world_size=1, device=device)
    rank.keep_prepared = []
    rank.stats.keep_spans = True
    return rank


def _loads(rank) -> list[VideoLoad]:
    models = getattr(rank, "models", None)
    if models is None:
        return []
    backbones = rank.bank.backbones
    reads = {
        name: {k for f in filters for k in f.reads} for name, filters in models.by_model.items()
    }
    filter_reads = [(f.model_name, set(f.reads)) for f in models.filters]
    return [
        video_load(p, backbones=backbones, reads=reads, filter_reads=filter_reads)
        for _, p in rank.keep_prepared
    ]


def profile(
    recipe: Recipe,
    *,
    videos: int = 8,
    out_dir: str | Path = "runs/profile",
    baseline: bool = False,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """Runs the first `videos` rows and writes `trace.json` and `profile.json` under `out_dir`."""
    from vqf.engine.launch import pick_device
    from vqf.errors import ConfigError
    from vqf.ops.demo import prepare_demo

    if videos < 1:
        raise ConfigError(f"--videos {videos} is not allowed", hint="profile at least 1 video")
    prepare_demo(recipe)
    out_dir = Path(out_dir)
    results = out_dir / "results"
    shutil.rmtree(results, ignore_errors=True)  # the sample always runs afresh, never resumes
    sample = replace(recipe, outputs=str(results), engine=replace(recipe.engine, max_rows=videos))
    device = pick_device(sample, 0)
    rank = _profiled_rank(sample, device)
    started = time.time()
    with GpuSampler(device) as sampler:
        snap = rank.run()
    spans = list(rank.stats.spans)
    workers = max(1, sample.decode.workers)
    rows = stage_rows(
        spans,
        stage_seconds=snap["stage_seconds"],
        stage_items=snap["stage_items"],
        threads={"fetch": workers, "probe": workers},
    )
    processing = wall_seconds(spans)
    loads = _loads(rank)
    succeeded = int(snap["counters"].get("succeeded", 0))
    result: dict[str, Any] = {
        "recipe": recipe.name,
        "device": device,
        "rows": snap["total"],
        "written": snap["written"],
        "succeeded": succeeded,
        "failures": snap["failures"],
        "wall_s": time.time() - started,
        "processing_s": processing,
        "videos_per_s": succeeded / processing if processing > 0 else 0.0,
        # On CUDA the model stage waits for the GPU after each backbone call while spans are
        # kept, so each stage is billed its own time; decode and host work then no longer
        # overlap those waits, and videos/s is a lower bound of what `vqf run` reaches.
        "synchronised": device.startswith("cuda"),
        "stages": [r.as_dict() for r in rows],
        "bottleneck": bottleneck(rows),
        "gpu": sampler.summary(),
        "precision": _precision(rank),
        "workload": _workload(loads),
        "streaming": _streaming(spans, snap, processing),
        "floors": None,
        "baseline": None,
        "trace": str(out_dir / "trace.json"),
    }
    if device.startswith("cuda") and loads:
        import torch

        floors = compute_floors(
            loads, gpu_name=torch.cuda.get_device_name(device), peak_tflops=peak_tflops
        )
        result["floors"] = {**asdict(floors), "binding": floors.binding}
    if baseline:
        from vqf.bench.baseline import run_baseline

        base = run_baseline(sample, rows=[row for row, _ in rank.keep_prepared], device=device)
        result["baseline"] = {
            **base,
            "speedup": result["videos_per_s"] / base["videos_per_s"]
            if base["videos_per_s"] > 0
            else None,
        }
    write_json(out_dir / "trace.json", chrome_trace({0: spans}, devices={0: device}))
    write_json(out_dir / "profile.json", result)
    return result


def _streaming(spans, snap: dict[str, Any], processing: float) -> dict[str, Any]:
    """How much decode and the models overlapped, and frames decoded against the plan."""
    counters = snap["counters"]
    both = overlap_seconds(spans, "decode", "model")
    return {
        "overlap_s": both,
        "overlap_share": both / processing if processing > 0 else 0.0,
        "frames_decoded": int(counters.get("frames_decoded", 0)),
        "frames_spanned": int(counters.get("frames_spanned", 0)),
        "frames_planned": int(counters.get("frames_planned", 0)),
        "detect_seek_fallbacks": int(counters.get("detect_seek_fallbacks", 0)),
        "frames_in_flight": snap.get("frames_in_flight", {}),
    }


def _precision(rank) -> dict[str, dict[str, Any]]:
    """Each backbone's dtype and its finite check (None: no batch was encoded)."""
    from vqf.models.backbone import dtype_name

    bank = getattr(rank, "bank", None)
    backbones = bank.backbones if bank is not None else {}
    return {
        name: {"dtype": dtype_name(b.dtype), "finite": b.finite} for name, b in backbones.items()
    }


def _precision_line(result: dict[str, Any]) -> str:
    parts = []
    for name, p in (result.get("precision") or {}).items():
        state = {True: "finite", None: "not checked: no clip encoded"}.get(
            p["finite"], f"INF/NaN tokens: set models.{name}.dtype: fp32"
        )
        parts.append(f"{name} {p['dtype']} ({state})")
    return "precision: " + (", ".join(parts) or "no backbones")


def _workload(loads: list[VideoLoad]) -> dict[str, Any]:
    n = max(len(loads), 1)
    shared = sum(v.flops for v in loads) / n
    per_filter = sum(v.flops_per_filter_backbone for v in loads) / n
    return {
        "videos": len(loads),
        "frames_decoded_per_video": sum(v.frames_decoded for v in loads) / n,
        "video_seconds": sum(v.duration_s for v in loads),
        "tflop_per_video": shared / 1e12,
        "tflop_per_video_one_backbone_per_filter": per_filter / 1e12,
        "codecs": sorted({v.codec for v in loads}),
    }


# -- the report --------------------------------------------------------------------------------
SYNC_NOTE = (
    " (a lower bound: profiling waits for the GPU after each backbone call to time the stages)"
)


def format_report(result: dict[str, Any]) -> str:
    """The profile as text: headline, per-stage table, bottleneck, GPU, floors, baseline."""
    lines = [
        f"vqf profile: {result['recipe']} on {result['device']}: {result['rows']} rows, "
        f"{result['succeeded']} videos succeeded in {result['processing_s']:.2f} s of processing "
        f"({result['wall_s']:.1f} s with model loading): {result['videos_per_s']:.2f} videos/s"
        + (SYNC_NOTE if result.get("synchronised") else ""),
        "",
        f"{'stage':<24}{'time s':>9}{'items':>7}{'items/s':>10}{'share':>7}{'busy':>7}{'wait s':>8}",
    ]
    for row in (StageRow(**r) for r in result["stages"]):
        name = ("  " if row.parent else "") + row.stage
        wait = f"{row.wait_s:.3f}" if row.wait_s is not None else "-"
        lines.append(
            f"{name:<24}{row.seconds:>9.3f}{row.items:>7}{row.items_per_s:>10.2f}"
            f"{row.share:>7.0%}{row.busy:>7.0%}{wait:>8}"
        )
    lines += ["", result["bottleneck"], ""]
    gpu = result["gpu"]
    lines.append(
        f"GPU: utilisation mean {gpu['util_mean']:.0f}% (max {gpu['util_max']:.0f}%), NVDEC mean "
        f"{gpu['nvdec_mean']:.0f}% (max {gpu['nvdec_max']:.0f}%), memory up to "
        f"{gpu['mem_used_gb_max']:.1f} GiB"
        if gpu
        else "GPU: n/a (no GPU, or nvidia-ml-py not installed)"
    )
    lines.append(_precision_line(result))
    w = result["workload"]
    lines.append(
        f"workload: {w['videos']} videos, {w['frames_decoded_per_video']:.0f} frames decoded per "
        f"video, {w['tflop_per_video']:.3g} TFLOP per video on shared backbones "
        f"({w['tflop_per_video_one_backbone_per_filter']:.3g} with one backbone per filter)"
    )
    s = result.get("streaming")
    if s:
        lines.append(
            f"streaming: decode and models busy at the same time for {s['overlap_s']:.2f} s "
            f"({s['overlap_share']:.0%} of the processing time); frames decoded "
            f"{s['frames_decoded']} for {s['frames_spanned']} spanned by the plans "
            f"({s['frames_planned']} planned); detection seeks that fell back to decoding "
            f"forward: {s['detect_seek_fallbacks']}"
        )
    lines.append(_floors_line(result))
    base = result["baseline"]
    if base:
        lines.append(
            f"baseline (the seed's design: {base['design']}): {base['succeeded']} of "
            f"{base['videos']} videos in {base['seconds']:.2f} s, {base['videos_per_s']:.2f} videos/s; "
            f"vqf {result['videos_per_s']:.2f} videos/s = {base['speedup'] or 0:.2f}x"
        )
    lines.append(f"trace: {result['trace']} (open in https://ui.perfetto.dev)")
    return "\n".join(lines)


def _floors_line(result: dict[str, Any]) -> str:
    f = result["floors"]
    if not f:
        return "floors: computed on a GPU only (DESIGN.md section 8)"
    decode = (
        f"decode {f['decode_videos_per_s']:.2f} videos/s ({f['nvdec_engines']} NVDEC x "
        f"{f['decode_fps'] / f['nvdec_engines']:.0f} fps)"
        if f["decode_videos_per_s"]
        else "decode n/a (NVDEC engines of this GPU unknown)"
    )
    model = (
        f"model {f['model_videos_per_s']:.2f} videos/s ({f['tflop_per_video']:.3g} TFLOP per "
        f"video at {f['peak_tflops']:.0f} TFLOP/s)"
        if f["model_videos_per_s"]
        else "model n/a (peak TFLOP/s of this GPU unknown: pass --peak-tflops)"
    )
    line = f"floors on {f['gpu']}: {decode}, {model}"
    if f["binding"]:
        name, vps = f["binding"]
        line += (
            f"; achieved {result['videos_per_s']:.2f} videos/s = "
            f"{result['videos_per_s'] / vps:.0%} of the {name} floor"
        )
    return line


# -- command line ------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `vqf profile` after the recipe arguments."""
    p.add_argument("--videos", type=int, default=8, help="rows of the table to run (default 8)")
    p.add_argument("--out", default="runs/profile", help="folder for trace.json and profile.json")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run the seed's design on the same videos and print the ratio",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's dense FP16/BF16 TFLOP/s for the model floor (known: H100, H200)",
    )


def cmd_profile(args: argparse.Namespace) -> int:
    """`vqf profile RECIPE ...`: runs the sample, prints the report."""
    from vqf.recipe_args import recipe_from_args

    recipe = recipe_from_args(args)
    result = profile(
        recipe,
        videos=args.videos,
        out_dir=args.out,
        baseline=args.baseline,
        peak_tflops=args.peak_tflops,
    )
    print(format_report(result))
    # Non-finite tokens make every score meaningless: the profile fails, not just reports.
    return 1 if any(p["finite"] is False for p in result["precision"].values()) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m vqf.bench.profile RECIPE ...`, the same as `vqf profile`."""
    from vqf.errors import VqfError
    from vqf.logs import configure_logging
    from vqf.recipe_args import add_recipe_arguments

    parser = argparse.ArgumentParser(prog="vqf profile", description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return cmd_profile(args)
    except VqfError as e:
        print(f"vqf profile: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
