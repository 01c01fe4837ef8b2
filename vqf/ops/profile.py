"""`vqf profile`: the real pipeline on a sample, where the time goes, and how far from the floors.

The engine runs in this process on the first `--videos` rows with stage spans kept. Out come a
per-stage table with the bottleneck named in one sentence, a Chrome/Perfetto trace
(`trace.json`), a JSON summary for comparing runs (`profile.json`) and, on a GPU, the floors of
DESIGN.md section 8 computed for the videos at hand next to what was achieved.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vqf.config import Recipe
from vqf.ops.dashboard import gpu_reading
from vqf.ops.trace import StageRow, bottleneck, chrome_trace, stage_rows, wall_seconds, write_json

# -- the floors (DESIGN.md section 8) ----------------------------------------------------------
NVDEC_FPS_1080P_H264 = 771.0  # one NVDEC engine, 1080p H.264 (NVIDIA's NVDEC application note)
CODEC_SPEED = {"h264": 1.0, "hevc": 1.7}  # relative to H.264; other codecs are taken as H.264
NVDEC_ENGINES = {  # per GPU, from NVIDIA's video codec support matrix
    "B200": 7,
    "GH200": 7,
    "H200": 7,
    "H100": 7,
    "H800": 7,
    "H20": 7,
    "A100": 5,
    "A800": 5,
    "A30": 4,
    "L4": 4,
    "L40S": 3,
    "L40": 3,
    "A40": 2,
    "A10": 2,
    "T4": 2,
    "V100": 1,
}
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}  # dense bf16 as measured on an H100 (same die)
PIXELS_1080P = 1920 * 1080


def _by_gpu_name(table: dict[str, Any], gpu_name: str) -> Any:
    """The entry whose key is a whole word of the GPU's name ("NVIDIA H100 80GB HBM3")."""
    for key in sorted(table, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", gpu_name):
            return table[key]
    return None


def nvdec_engines(gpu_name: str) -> int | None:
    """NVDEC engines of a GPU by its name; None when the name is not in the table."""
    return _by_gpu_name(NVDEC_ENGINES, gpu_name)


def tokens_per_clip(
    *, frames: int, height: int, width: int, patch_size: int = 16, tubelet_size: int = 2
) -> int:
    """Encoder tokens of one clip: tubelets of `tubelet_size` frames, `patch_size` patches."""
    return -(-frames // tubelet_size) * (height // patch_size) * (width // patch_size)


def encoder_params(
    *,
    hidden: int,
    layers: int,
    mlp_ratio: float,
    patch_size: int = 16,
    tubelet_size: int = 2,
    in_chans: int = 3,
) -> float:
    """Weights a token passes through: per layer q, k, v, out (4 d^2) and the MLP (2 r d^2)."""
    per_layer = 4 * hidden**2 + 2 * mlp_ratio * hidden**2
    return layers * per_layer + in_chans * tubelet_size * patch_size**2 * hidden


def clip_flops(
    *,
    hidden: int,
    layers: int,
    mlp_ratio: float,
    tokens: int,
    patch_size: int = 16,
    tubelet_size: int = 2,
    in_chans: int = 3,
) -> float:
    """FLOPs of one encoder pass: 2 x params x tokens, plus QK^T and AV (4 n^2 d per layer)."""
    params = encoder_params(
        hidden=hidden,
        layers=layers,
        mlp_ratio=mlp_ratio,
        patch_size=patch_size,
        tubelet_size=tubelet_size,
        in_chans=in_chans,
    )
    return 2 * params * tokens + 4 * layers * tokens**2 * hidden


@dataclass(frozen=True)
class VideoLoad:
    """What one video costs: frames the decoder must produce and encoder FLOPs of its clips."""

    codec: str
    width: int
    height: int
    frames_decoded: int
    duration_s: float
    flops: float  # with the recipe's shared backbones
    flops_per_filter_backbone: float = 0.0  # one backbone per filter, as the seed does it


@dataclass(frozen=True)
class Floors:
    """The most videos/s a GPU can give for these videos, by decode and by model."""

    gpu: str
    nvdec_engines: int | None
    decode_fps: float | None  # frames/s of all engines for this mix of codecs and sizes
    decode_videos_per_s: float | None
    tflop_per_video: float
    peak_tflops: float | None
    model_videos_per_s: float | None

    @property
    def binding(self) -> tuple[str, float] | None:
        """("model" or "decode", videos/s) of the lower floor; None when neither is known."""
        known = [
            (n, v)
            for n, v in (("decode", self.decode_videos_per_s), ("model", self.model_videos_per_s))
            if v
        ]
        return min(known, key=lambda kv: kv[1]) if known else None


def compute_floors(
    videos: list[VideoLoad],
    *,
    gpu_name: str,
    engines: int | None = None,
    peak_tflops: float | None = None,
) -> Floors:
    """DESIGN.md section 8 for `videos`: NVDEC time of their frames, tensor-core time of their clips."""
    engines = engines or nvdec_engines(gpu_name)
    peak = peak_tflops or _by_gpu_name(PEAK_TFLOPS, gpu_name)
    n = max(len(videos), 1)
    decode_fps = decode_vps = None
    if engines and videos:
        # one engine's rate scales with the pixels per frame and the codec
        seconds = (
            sum(
                v.frames_decoded
                / (
                    NVDEC_FPS_1080P_H264
                    * CODEC_SPEED.get(v.codec, 1.0)
                    * PIXELS_1080P
                    / max(v.width * v.height, 1)
                )
                for v in videos
            )
            / engines
        )
        decode_fps = sum(v.frames_decoded for v in videos) / seconds if seconds else None
        decode_vps = len(videos) / seconds if seconds else None
    tflop = sum(v.flops for v in videos) / n / 1e12
    return Floors(
        gpu=gpu_name,
        nvdec_engines=engines,
        decode_fps=decode_fps,
        decode_videos_per_s=decode_vps,
        tflop_per_video=tflop,
        peak_tflops=peak,
        model_videos_per_s=peak / tflop if peak and tflop > 0 else None,
    )


def video_load(
    prepared: Any,
    *,
    backbones: dict[str, Any],
    reads: dict[str, set[str]],
    filter_reads: list[tuple[str, set[str]]] | None = None,
) -> VideoLoad:
    """A probed and planned video's load. `reads`: backbone name -> clip kinds it encodes;
    `filter_reads`: (backbone, kinds) of each filter, for one backbone per filter.

    Decoding goes GOP by GOP, so every frame from the first to the last sampled one is
    decoded when samples are closer together than a GOP (the usual case).
    """
    plan, info = prepared.plan, prepared.info

    def flops_of(backbone: Any, kinds: set[str]) -> float:
        cfg = backbone.model.config
        total = 0.0
        for clip in plan.clips:
            if clip.kind in kinds:
                tokens = tokens_per_clip(
                    frames=len(clip.take),
                    height=cfg.crop_size,
                    width=cfg.crop_size,
                    patch_size=cfg.patch_size,
                    tubelet_size=cfg.tubelet_size,
                )
                total += clip_flops(
                    hidden=cfg.hidden_size,
                    layers=cfg.num_hidden_layers,
                    mlp_ratio=cfg.mlp_ratio,
                    tokens=tokens,
                    patch_size=cfg.patch_size,
                    tubelet_size=cfg.tubelet_size,
                    in_chans=cfg.in_chans,
                )
        return total

    shared = sum(flops_of(backbones[name], kinds) for name, kinds in reads.items())
    per_filter = sum(flops_of(backbones[name], kinds) for name, kinds in (filter_reads or []))
    frames = plan.frames
    return VideoLoad(
        codec=info.codec,
        width=info.width,
        height=info.height,
        frames_decoded=int(frames[-1] - frames[0] + 1) if len(frames) else 0,
        duration_s=float(info.duration_s),
        flops=shared,
        flops_per_filter_backbone=per_filter or shared,
    )


# -- GPU sampling ------------------------------------------------------------------------------
class GpuSampler:
    """Reads GPU and NVDEC utilisation every `every_s` seconds in a thread (NVML, when present)."""

    def __init__(self, device: str, *, every_s: float = 0.25):
        self.device, self.every_s = device, every_s
        self.readings: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vqf-gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        if gpu_reading(self.device) is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            reading = gpu_reading(self.device)
            if reading is not None:
                self.readings.append(reading)

    def summary(self) -> dict[str, float] | None:
        """Mean and max utilisation, NVDEC utilisation and memory; None without readings."""
        if not self.readings:
            return None
        out = {"samples": float(len(self.readings))}
        for key in ("util", "nvdec", "mem_used_gb"):
            values = [r[key] for r in self.readings]
            out[f"{key}_mean"] = sum(values) / len(values)
            out[f"{key}_max"] = max(values)
        return out


# -- the run -----------------------------------------------------------------------------------
def _profiled_rank(recipe: Recipe, device: str):
    """A Rank that keeps every video it prepared (row and plan), for the floors and the
    baseline of exactly these videos."""
    from vqf.engine.rank import Rank

    class ProfiledRank(Rank):
        def _prepare(self, item):
            ready = super()._prepare(item)
            if ready is not None:
                self.prepared.append((ready.item.row, ready.prepared))
            return ready

    rank = ProfiledRank(recipe, rank=0, world_size=1, device=device)
    rank.prepared = []
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
        for _, p in rank.prepared
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
        "stages": [r.as_dict() for r in rows],
        "bottleneck": bottleneck(rows),
        "gpu": sampler.summary(),
        "workload": _workload(loads),
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
        from vqf.ops.baseline import run_baseline

        base = run_baseline(sample, rows=[row for row, _ in rank.prepared], device=device)
        result["baseline"] = {
            **base,
            "speedup": result["videos_per_s"] / base["videos_per_s"]
            if base["videos_per_s"] > 0
            else None,
        }
    write_json(out_dir / "trace.json", chrome_trace({0: spans}, devices={0: device}))
    write_json(out_dir / "profile.json", result)
    return result


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
def format_report(result: dict[str, Any]) -> str:
    """The profile as text: headline, per-stage table, bottleneck, GPU, floors, baseline."""
    lines = [
        f"vqf profile: {result['recipe']} on {result['device']}: {result['rows']} rows, "
        f"{result['succeeded']} videos succeeded in {result['processing_s']:.2f} s of processing "
        f"({result['wall_s']:.1f} s with model loading): {result['videos_per_s']:.2f} videos/s",
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
    w = result["workload"]
    lines.append(
        f"workload: {w['videos']} videos, {w['frames_decoded_per_video']:.0f} frames decoded per "
        f"video, {w['tflop_per_video']:.3g} TFLOP per video on shared backbones "
        f"({w['tflop_per_video_one_backbone_per_filter']:.3g} with one backbone per filter)"
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
    from vqf.cli import load_from_args

    recipe = load_from_args(args)
    result = profile(
        recipe,
        videos=args.videos,
        out_dir=args.out,
        baseline=args.baseline,
        peak_tflops=args.peak_tflops,
    )
    print(format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m vqf.ops.profile RECIPE ...`, the same as `vqf profile`."""
    from vqf.cli import _recipe_args, configure_logging
    from vqf.errors import VqfError

    parser = argparse.ArgumentParser(prog="vqf profile", description=__doc__.splitlines()[0])
    _recipe_args(parser)
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
