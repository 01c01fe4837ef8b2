"""The check's measurements: NVDEC sessions, the backbone's TFLOP/s, the profile of stage2 and
the seed's design on the same rows."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vqf.bench.gpu_check.context import Section
from vqf.bench.gpu_check.modes import STAGE2
from vqf.bench.gpu_check.sections import video_of
from vqf.bench.profile import GpuSampler as Readings  # NVML readings while a block runs


# -- nvdec -------------------------------------------------------------------------------------
def section_nvdec(s: Section) -> dict[str, Any]:
    from vqf.bench.floors import NVDEC_FPS_1080P_H264, nvdec_engines

    video = video_of(s)
    recipe = check_recipe(s, [f"decode.route={s.mode.route}"])
    result: dict[str, Any] = {"video": video["path"], "route_asked": s.mode.route, "rows": []}
    engines = nvdec_engines(_gpu_name(s.mode.device))
    if engines:
        pixels = video["width"] * video["height"]
        result["floor_fps"] = engines * NVDEC_FPS_1080P_H264 * 1920 * 1080 / pixels
    for sessions in s.mode.sessions:
        each = max(1, math.ceil(s.mode.session_videos / sessions))
        result["rows"].append(
            decode_sessions(recipe, Path(video["path"]), sessions=sessions, videos_each=each)
        )
        s.save(result)
    return result


def decode_sessions(recipe, path: Path, *, sessions: int, videos_each: int) -> dict[str, Any]:
    """`sessions` threads with a VideoPlane each, as decode lanes are, all decoding at once;
    the clock and the NVML readings run from when every pipeline is built and has decoded its
    first chunk to when the last lane is done (lane set-up is left out of both)."""
    from vqf.video import VideoPlane

    device = recipe_device(recipe)
    ready = threading.Barrier(sessions + 1)
    done: list[tuple[int, int, str]] = []
    errors: list[str] = []

    def lane() -> None:
        try:
            plane = VideoPlane(recipe=recipe, device=device)
            prepared = plane.prepare(path, uri=str(path))
            first = plane.stream(prepared)
            next(first)  # builds the pipeline and opens the decoder before the clock starts
            first.close()
            _synchronize(device)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:300]}")
            ready.wait()
            return
        ready.wait()
        decoded = planned = 0
        try:
            for _ in range(videos_each):
                counter = {"decoded": 0}
                for chunk in plane.stream(prepared, counter=counter):
                    planned += int(chunk.frames.shape[0])
                decoded += counter["decoded"]
            _synchronize(device)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:300]}")
        done.append((decoded, planned, prepared.route))

    threads = [threading.Thread(target=lane, name=f"vqf-check-lane-{i}") for i in range(sessions)]
    for t in threads:
        t.start()
    ready.wait()  # every lane has built its pipeline and decoded its first chunk
    with Readings(device, every_s=0.1) as readings:  # so NVML reads the timed decode alone
        started = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
    decoded, planned = sum(d for d, _, _ in done), sum(p for _, p, _ in done)
    videos = videos_each * len(done)
    gpu = readings.summary() or {}
    return {
        "sessions": sessions,
        "videos": videos,
        "routes": sorted({r for _, _, r in done}),
        "frames_decoded": decoded,
        "frames_planned": planned,
        "seconds": round(seconds, 3),
        "decode_fps": decoded / seconds if seconds > 0 else 0.0,
        "planned_fps": planned / seconds if seconds > 0 else 0.0,
        "videos_per_s": videos / seconds if seconds > 0 else 0.0,
        "nvdec_mean": gpu.get("nvdec_mean"),
        "nvdec_max": gpu.get("nvdec_max"),
        "gpu_util_mean": gpu.get("util_mean"),
        "errors": errors,
    }


# -- backbone ----------------------------------------------------------------------------------
def section_backbone(s: Section) -> dict[str, Any]:
    import torch

    from vqf.bench.floors import clip_flops, tokens_per_clip
    from vqf.models.backbone import Backbone, random_backbone_model, resolve_dtype

    m = s.mode
    model = random_backbone_model(
        m.backbone, crop_size=m.clip_size, device=m.device, dtype=torch.float32, seed=0
    )
    c = model.config
    geometry = dict(patch_size=c.patch_size, tubelet_size=c.tubelet_size)
    tokens = tokens_per_clip(
        frames=m.clip_frames, height=m.clip_size, width=m.clip_size, **geometry
    )
    flops = clip_flops(hidden=c.hidden_size, layers=c.num_hidden_layers, mlp_ratio=c.mlp_ratio,
                       tokens=tokens, in_chans=c.in_chans, **geometry)  # fmt: skip
    shape = (m.clip_batch, m.clip_frames, 3, m.clip_size, m.clip_size)
    result: dict[str, Any] = {
        "model": f"V-JEPA 2 {m.backbone} (hidden {c.hidden_size}, {c.num_hidden_layers} layers)",
        "clips": list(shape),
        "tokens_per_clip": tokens,
        "tflop_per_clip": flops / 1e12,
        "device": m.device,
        "dtypes": {},
        "matmul": {},
    }
    clips = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(m.device)
    for name in m.dtypes:
        dtype = resolve_dtype(name, m.device)
        model.to(dtype=dtype)
        backbone = Backbone(name=name, model=model, device=torch.device(m.device), dtype=dtype)
        pixels = clips.to(dtype)
        times = time_calls(lambda b=backbone, x=pixels: b.encode(x), device=m.device,
                           warmup=2, repeats=m.repeats)  # fmt: skip
        median = sorted(times)[len(times) // 2]
        result["dtypes"][name] = {
            "ms_per_call": median * 1e3,
            "ms_min_max": [min(times) * 1e3, max(times) * 1e3],
            "clips_per_s": m.clip_batch / median,
            "tflop_per_s": m.clip_batch * flops / median / 1e12,
            "finite": bool(torch.isfinite(backbone.encode(pixels)).all().item()),
        }
        result["matmul"][name] = matmul_tflops(dtype, side=m.matmul, device=m.device)
        s.save(result)
    return result


def time_calls(work, *, device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `work()` after `warmup` calls: CUDA events on a GPU."""
    import torch

    for _ in range(warmup):
        work()
    _synchronize(device)
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            work()
            out.append(time.perf_counter() - started)
    return out


def matmul_tflops(dtype, *, side: int, device: str) -> float:
    """A dense square product on random data (two input sets in turn, so the cache does not
    serve them): the rate the matrix units give this dtype here."""
    import torch

    g = torch.Generator().manual_seed(1)
    pairs = [
        tuple(torch.randn(side, side, generator=g).to(device, dtype) for _ in range(2))
        for _ in range(2)
    ]
    turn = iter(range(10**9))

    def product():
        a, b = pairs[next(turn) % 2]
        return a @ b

    times = time_calls(product, device=device, warmup=3, repeats=10)
    return 2 * side**3 / sorted(times)[len(times) // 2] / 1e12


# -- profile and the seed's design on the same rows ---------------------------------------------
def section_profile(s: Section) -> dict[str, Any]:
    from vqf.bench.profile import format_report, profile

    video = video_of(s)
    table, rows = profile_table(s, video)
    recipe = check_recipe(s, [f"tables={table}"])
    with Readings(recipe_device(recipe), every_s=0.25) as readings:
        result = profile(recipe, videos=len(rows), out_dir=s.work / "profile")
    for name in ("profile.json", "trace.json"):
        source = s.work / "profile" / name
        if source.exists() and source.stat().st_size < 12e6:
            shutil.copyfile(source, s.out / name)
    floors = result.get("floors")
    return {
        "recipe": "pipelines/stage2.yaml (random large weights)",
        "device": result["device"],
        "precision": result["precision"],  # the dtype each backbone ran in
        "synchronised": result.get("synchronised", False),
        "videos": len(rows),
        "succeeded": result["succeeded"],
        "failures": result["failures"],
        "videos_per_s": result["videos_per_s"],
        "processing_s": result["processing_s"],
        "gpu": result.get("gpu"),  # the whole run, model loading included
        "gpu_processing": readings.summary(last_s=result["processing_s"]),
        "workload": result["workload"],
        "streaming": result.get("streaming"),
        "bottleneck": result["bottleneck"],
        "floors": floors,
        "reference_floors": None if floors else reference_floors(result, video),
        "report": format_report(result),
    }


def section_baseline(s: Section) -> dict[str, Any]:
    """What `vqf profile --baseline` runs (vqf.bench.baseline.run_baseline) on the profile's
    first rows, with the GPU read while it scores (its model loading left out)."""
    from vqf.bench.baseline import run_baseline
    from vqf.schema import parse_input_row

    table, rows = profile_table(s, video_of(s))
    recipe = check_recipe(s, [f"tables={table}"])
    device = recipe_device(recipe)
    chosen = [parse_input_row(r) for r in rows[: s.mode.baseline_videos]]

    def on_video(partial: dict[str, Any]) -> None:  # saved after each video: a cut-off keeps it
        since = time.monotonic() - partial["seconds"]  # the GPU while it scores, not loading
        s.save({**partial, "device": device, "gpu": readings.summary(since=since)})
        print(f"baseline: saved after {partial['done']} of {partial['videos']} videos "
              f"({partial['seconds']:.1f} s)", flush=True)  # fmt: skip

    with Readings(device, every_s=0.25) as readings:
        base = run_baseline(
            recipe,
            rows=chosen,
            device=device,
            workers=s.mode.baseline_workers,
            on_video=on_video,
        )
    return {**base, "device": device, "gpu": readings.summary(last_s=base["seconds"])}


def profile_table(s: Section, video: dict[str, Any]) -> tuple[Path, list[dict[str, str]]]:
    """The profile's rows: copies (hard links) of the generated video, whose decode is the
    same; written once and shared by the profile and the baseline."""
    folder, table = s.work / "profile-videos", s.work / "profile-input.jsonl"
    rows = []
    for i in range(s.mode.videos):
        copy = folder / f"v{i:02d}.mp4"
        if not copy.exists():
            folder.mkdir(parents=True, exist_ok=True)
            try:
                os.link(video["path"], copy)
            except OSError:
                shutil.copyfile(video["path"], copy)
        rows.append({"video_id": f"v{i:02d}", "oss_bucket": "", "video_path": str(copy)})
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table, rows


def check_recipe(s: Section, extra: list[str]):
    """pipelines/stage2.yaml as the check runs it: random weights of the recipe's sizes,
    scratch folders under --work, then the mode's own overrides."""
    from vqf.config import load_recipe

    w = s.work
    return load_recipe(STAGE2, overrides=[
        f"outputs={w / 'profile' / 'results'}",
        "models.backbone.init=random", "models.rov_backbone.init=random",
        "models.detector.init=random", "storage.cpfs_root=", "storage.alluxio_root=",
        f"storage.cache_dir={w / 'cache'}", f"engine.state_dir={w / 'state'}",
        *s.mode.overrides, *extra,
    ])  # fmt: skip


def recipe_device(recipe) -> str:
    from vqf.engine.launch import pick_device

    return pick_device(recipe, 0)


def reference_floors(result: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
    """Section 8's floors of an H200 by the datasheet for these videos (when not on a GPU)."""
    from vqf.bench.floors import VideoLoad, compute_floors

    w = result["workload"]
    load = VideoLoad(
        codec=(w["codecs"] or ["h264"])[0],
        width=video["width"],
        height=video["height"],
        frames_decoded=round(w["frames_decoded_per_video"]),
        duration_s=w["video_seconds"] / max(w["videos"], 1),
        flops=w["tflop_per_video"] * 1e12,
    )
    floors = compute_floors([load] * max(w["videos"], 1), gpu_name="NVIDIA H200 (datasheet)")
    return {**asdict(floors), "binding": floors.binding}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _gpu_name(device: str) -> str:
    if not device.startswith("cuda"):
        return ""
    import torch

    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else ""


MEASURES = {
    "nvdec": section_nvdec,
    "backbone": section_backbone,
    "profile": section_profile,
    "baseline": section_baseline,
}
