"""The check's sections that are not measurements: the environment, the generated video and
`pytest -m gpu` (tests/test_gpu_paths.py first, on its own; the rest last)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vqf.bench.gpu_check.context import Section
from vqf.bench.gpu_check.modes import PATHS_TESTS, ROOT


# -- env ---------------------------------------------------------------------------------------
def section_env(s: Section) -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "host": platform.node(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    info.update(_nvidia_smi())
    info.update(_torch_info(s.mode.device))
    info["libnvcuvid"] = _libnvcuvid()
    s.save(info)
    for label, module in (("dali", "nvidia.dali"), ("pyav", "av")):
        info[label] = _module_version(module)  # imported: that they load is the point
    info["dali_wheel"] = _dali_wheel()
    info["nvdec_one_frame"] = _nvdec_one_frame(info)
    s.save(info)
    for label, dist in (("ultralytics", "ultralytics"), ("transformers", "transformers"),
                        ("pynvml", "nvidia-ml-py")):  # fmt: skip
        info[label] = _dist_version(dist)
    try:
        import av

        info["ffmpeg_libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
    except Exception as e:
        info["ffmpeg_libavcodec"] = f"n/a ({type(e).__name__})"
    return info


def _nvdec_one_frame(info: dict[str, Any]) -> str:
    """`vqf doctor`'s check: one frame of a generated H.264 clip decoded by DALI on NVDEC."""
    if not info.get("cuda_available"):
        return "not tried: no CUDA device"
    if str(info.get("dali", "n/a")).startswith("n/a"):
        return "not tried: DALI does not import"
    from vqf.ops.doctor import nvdec_one_frame

    try:
        return nvdec_one_frame(0)
    except Exception as e:
        return f"failed: {type(e).__name__}: {str(e)[:300]}"


def _nvidia_smi() -> dict[str, Any]:
    """The driver, CUDA version and the GPU's state as nvidia-smi reads it (queries only)."""
    if shutil.which("nvidia-smi") is None:
        return {"nvidia_smi": "n/a (not on PATH)"}
    fields = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm",
              "power.draw", "power.limit", "temperature.gpu", "persistence_mode",
              "compute_mode", "mig.mode.current")  # fmt: skip
    out: dict[str, Any] = {}
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
        found = re.search(r"CUDA Version:\s*([\d.]+)", text)
        out["cuda_driver"] = found.group(1) if found else "n/a"
        line = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15,
        ).stdout.splitlines()[0]  # fmt: skip
        out.update({f"gpu.{k}": v.strip() for k, v in zip(fields, line.split(","))})
    except Exception as e:
        out["nvidia_smi"] = f"n/a ({type(e).__name__}: {e})"
    return out


def _torch_info(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "n/a (CPU build)",
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    out["device_used"] = device
    return out


def _dali_wheel() -> str:
    """Which DALI build is installed (its CUDA major is in the name: nvidia-dali-cuda130)."""
    from importlib.metadata import distributions

    names = {
        f"{d.metadata['Name']} {d.version}"
        for d in distributions()
        if (d.metadata["Name"] or "").lower().startswith("nvidia-dali")
    }
    return ", ".join(sorted(names)) or "n/a (not installed)"


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "n/a (not installed)"


def _module_version(module: str) -> str:
    import importlib

    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as e:
        return f"n/a ({type(e).__name__}: {str(e)[:80]})"


def _libnvcuvid() -> str:
    """NVDEC's user-space library, as DALI loads it: its path, or why it does not load."""
    import ctypes

    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError as e:
        return f"not loadable ({e})"
    maps = Path("/proc/self/maps").read_text().splitlines()
    paths = {line.split()[-1] for line in maps if "libnvcuvid" in line}
    return f"loadable: {', '.join(sorted(paths)) or 'libnvcuvid.so.1'}"


# -- videos ------------------------------------------------------------------------------------
def section_videos(s: Section) -> dict[str, Any]:
    from vqf.video.probe import probe

    m = s.mode
    path = s.work / f"h264_{m.width}x{m.height}_{m.seconds:g}s_{m.fps:g}fps_gop{m.gop}.mp4"
    started = time.perf_counter()
    if not path.exists():
        generate_video(
            path, width=m.width, height=m.height, seconds=m.seconds, fps=m.fps, gop=m.gop
        )
    seconds = time.perf_counter() - started
    info = probe(path, device=m.device)
    size = path.stat().st_size
    return {
        "path": str(path),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "frames": info.frame_count,
        "seconds": round(info.duration_s, 2),
        "fps": round(info.fps, 2),
        "gop": m.gop,
        "b_frames": reordered(path),
        "mb": round(size / 1e6, 2),
        "mbit_per_s": round(size * 8 / 1e6 / max(info.duration_s, 1e-9), 2),
        "route_here": info.route,
        "generate_s": round(seconds, 1),
    }


def generate_video(path: Path, *, width: int, height: int, seconds: float, fps: float, gop: int):
    """H.264 (x264 veryfast: CABAC, 3 B-frames) of vqf.video.synth's moving pattern. Large
    frames are drawn in a process pool: one 1080p frame takes about 0.1 s to draw."""
    from concurrent.futures import ProcessPoolExecutor
    from fractions import Fraction

    import av

    n = max(1, round(seconds * fps))
    workers = max(1, min(16, (os.cpu_count() or 2) - 1)) if width * height > 1e5 else 0
    tmp = path.with_suffix(".tmp.mp4")
    pool = ProcessPoolExecutor(max_workers=workers) if workers else None
    try:
        with av.open(str(tmp), "w") as container:
            rate = Fraction(fps).limit_denominator(1000)
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = stream.codec_context.time_base = 1 / rate
            stream.options = {"preset": "veryfast", "crf": "23", "bf": "3"}
            stream.codec_context.gop_size = gop
            step = 4 * max(workers, 1)  # frames in the pool at a time: memory stays small
            for start in range(0, n, step):
                indices = range(start, min(n, start + step))
                args = [(i, width, height) for i in indices]
                for i, picture in zip(indices, pool.map(_draw, args) if pool else map(_draw, args)):
                    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                    frame.pts, frame.time_base = i, 1 / rate
                    container.mux(stream.encode(frame))
            container.mux(stream.encode())
    finally:
        if pool:
            pool.shutdown()
    tmp.replace(path)
    return path


def _draw(args: tuple[int, int, int]):
    from vqf.video.synth import draw_frame

    index, width, height = args
    return draw_frame(index, width=width, height=height)


def reordered(path: Path) -> bool:
    """Whether presentation order differs from decode order (B-frames), from the packets."""
    import av

    latest = None
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            if packet.pts is None:
                continue
            if latest is not None and packet.pts < latest:
                return True
            latest = packet.pts if latest is None else max(latest, packet.pts)
    return False


def video_of(s: Section) -> dict[str, Any]:
    """The videos section's result, made now if that section did not leave one."""
    video = s.earlier("videos")
    return video if video.get("path") and Path(video["path"]).exists() else section_videos(s)


# -- pytest ------------------------------------------------------------------------------------
OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def section_gpu_paths(s: Section) -> dict[str, Any]:
    """tests/test_gpu_paths.py alone: NVDEC frames against the CPU route's, no device-to-host
    copy of frames, bf16/fp16 tokens against fp32."""
    return run_pytest(s, [PATHS_TESTS], label="gpu-paths")


def section_gpu_tests(s: Section) -> dict[str, Any]:
    """The rest of `pytest -m gpu`: every other test file the mode names."""
    return run_pytest(s, [*s.mode.tests, f"--ignore={PATHS_TESTS}"], label="gpu-tests")


def run_pytest(s: Section, targets: list[str], *, label: str) -> dict[str, Any]:
    """`pytest -m gpu TARGETS` (VQF_REQUIRE_GPU=1 on a GPU): counts and failures from its
    JUnit XML, or from its verbose lines when it ran past the section's limit."""
    import importlib.util

    junit, log = s.work / f"{label}.xml", s.work / f"{label}.log"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "gpu", "-rfE",
           "--durations=5", "--continue-on-collection-errors", f"--junitxml={junit}",
           *targets]  # fmt: skip
    if importlib.util.find_spec("pytest_timeout"):
        cmd.append("--timeout=60")
    env = dict(os.environ)
    env.pop("VQF_REQUIRE_GPU", None)
    if s.mode.require_gpu:
        env["VQF_REQUIRE_GPU"] = "1"
    result: dict[str, Any] = {"command": " ".join(cmd[2:]), "require_gpu": s.mode.require_gpu}
    s.save(result)
    with log.open("w") as f:
        try:
            code = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=s.left() - 5
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    text = log.read_text(errors="replace")
    print(text)
    result.update(exit_code=code, tail=text.splitlines()[-30:])
    if junit.exists():
        result.update(junit_counts(junit))
        shutil.copyfile(junit, s.out / f"{label}-junit.xml")
    else:  # cut off: what the verbose lines say so far
        result.update(line_counts(text), error="pytest ran past the section's limit")
    return result


def junit_counts(path: Path) -> dict[str, Any]:
    """Counts and failures from pytest's JUnit XML."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        if bad is not None:
            message = "".join((bad.get("message") or "").splitlines()[:1])[:200]
            failed.append(f"{case.get('classname')}::{case.get('name')}: {message}")
    return {**counts, "pytest_s": round(float(suite.get("time", 0)), 1), "failed": failed}


def line_counts(text: str) -> dict[str, Any]:
    """Counts from `pytest -v` lines, for a run that ended before its summary."""
    seen = dict(m.groups() for m in map(OUTCOME.match, text.splitlines()) if m)
    outcomes = list(seen.values())
    return {
        "tests": len(outcomes),
        "passed": outcomes.count("PASSED") + outcomes.count("XPASS"),
        "failures": outcomes.count("FAILED"),
        "errors": outcomes.count("ERROR"),
        "skipped": outcomes.count("SKIPPED") + outcomes.count("XFAIL"),
        "failed": [name for name, outcome in seen.items() if outcome in ("FAILED", "ERROR")],
    }


CHECKS = {
    "env": section_env,
    "videos": section_videos,
    "gpu_paths": section_gpu_paths,
    "gpu_tests": section_gpu_tests,
}
