"""`vqf doctor`: what this machine offers vqf, each missing piece with a hint.

`[MISS]` lines are what this machine lacks (a GPU, credentials); `[FAIL]` lines are an install
that cannot work as it is (torch and DALI built for different CUDA majors, a driver too old for
torch's CUDA, NVDEC failing on a GPU), and make `vqf doctor` exit 1.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

from vqf.config import Recipe

DALI_DISTS = {"nvidia-dali-cuda120": 12, "nvidia-dali-cuda130": 13}
STACK_HINT = "reinstall one stack: VQF_CUDA=12|13 bash launch/setup.sh (launch/constraints-cu*.txt)"
NVCUVID = "libnvcuvid.so.1"


def _check(name: str, ok: bool, detail: str, hint: str = "", *, fail: bool = False) -> str:
    mark = "ok  " if ok else ("FAIL" if fail else "MISS")
    line = f"[{mark}] {name}: {detail}"
    return line + (f"\n         hint: {hint}" if hint and not ok else "")


def torch_cuda_major() -> int | None:
    """The CUDA major torch was built for; None for a CPU-only build."""
    import torch

    return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None


def dali_cuda_majors() -> dict[str, int]:
    """The DALI distributions installed, each with the CUDA major it was built for."""
    found = {}
    for dist, major in DALI_DISTS.items():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[dist] = major
    return found


def installed_stack() -> str:
    """Which of launch/setup.sh's stacks this environment holds, from its stamp."""
    stamp = Path(sys.prefix) / ".vqf-installed"
    words = stamp.read_text().split() if stamp.is_file() else []
    if words and words[0] in ("cu12", "cu13"):
        return _check(
            "stack", True, f"{words[0]} (launch/constraints-{words[0]}.txt, {sys.prefix})"
        )
    return f"[ -- ] stack: {sys.prefix} was not set up by launch/setup.sh (or by an older one)"


def stack_check(torch_major: int | None, dali: dict[str, int]) -> str:
    """One line: torch's and DALI's CUDA majors, failed when they differ."""
    torch_part = f"torch for CUDA {torch_major}" if torch_major else "torch CPU-only"
    if not dali:
        return _check("CUDA majors", False, f"{torch_part}, no DALI installed", STACK_HINT)
    dali_part = ", ".join(f"DALI for CUDA {m} ({d})" for d, m in dali.items())
    majors = set(dali.values()) | ({torch_major} if torch_major else set())
    if len(dali) > 1 or len(majors) > 1:
        return _check(
            "CUDA majors",
            False,
            f"{torch_part}, {dali_part}: two CUDA runtimes in one process",
            STACK_HINT,
            fail=True,
        )
    return _check("CUDA majors", True, f"{torch_part}, {dali_part}: one CUDA major")


def driver_check(torch_major: int | None) -> str:
    """The driver's version and the newest CUDA it runs (NVML), against torch's CUDA major."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
    except Exception:
        return "[ -- ] NVIDIA driver: none found (no GPU here, or nvidia-ml-py missing)"
    version = version.decode() if isinstance(version, bytes) else version
    major, minor = cuda // 1000, (cuda % 1000) // 10
    detail = f"{version}, runs CUDA up to {major}.{minor}"
    if torch_major and major < torch_major:
        return _check(
            "NVIDIA driver",
            False,
            f"{detail}; torch is built for CUDA {torch_major}",
            f"install the CUDA {major} stack: VQF_CUDA={major} bash launch/setup.sh",
            fail=True,
        )
    return _check("NVIDIA driver", True, detail)


def nvml_check() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except ImportError:
        return _check("GPU readings", False, "nvidia-ml-py missing", "run launch/setup.sh")
    except Exception as e:
        return _check(
            "GPU readings",
            False,
            f"NVML unavailable ({type(e).__name__})",
            "no NVIDIA driver: the dashboard's GPU, memory and NVDEC columns say n/a",
        )
    return _check("GPU readings", True, f"NVML sees {count} GPU(s): utilisation, memory, NVDEC")


def oss_signing_check(storage) -> str:
    """How OSS requests will be signed: V4 needs a region (named, or read off the endpoint)."""
    from vqf.storage.oss import region_of

    oss = storage.oss
    if oss.signature == "v1":
        return _check("OSS signing", True, "V1 (storage.oss.signature: v1)")
    endpoint = oss.endpoint or os.environ.get("OSS_ENDPOINT", "")
    region = oss.region or os.environ.get("OSS_REGION", "")
    source = "storage.oss.region" if oss.region else "OSS_REGION"
    if not region and region_of(endpoint):
        region, source = region_of(endpoint), f"the endpoint {endpoint}"
    return _check(
        "OSS signing",
        bool(region),
        f"V4, region {region} (from {source})" if region else "V4, but no region",
        "set storage.oss.region (e.g. cn-hangzhou) or OSS_REGION",
    )


def load_nvcuvid() -> str | None:
    """None when the driver's NVDEC library loads, else why not."""
    try:
        ctypes.CDLL(NVCUVID)
    except OSError as e:
        return str(e)
    return None


def nvdec_one_frame(device_index: int = 0) -> str:
    """Decodes the first frame of a generated H.264 clip with DALI's mixed (NVDEC) decoder."""
    import numpy as np
    from nvidia.dali import Pipeline, fn, types

    from vqf.video.synth import make_video

    with tempfile.TemporaryDirectory(prefix="vqf-doctor-") as tmp:
        path = Path(tmp) / "doctor.mp4"
        make_video(path, codec="h264", width=64, height=48, seconds=0.5, fps=10)
        data = np.fromfile(path, dtype=np.uint8)
    pipe = Pipeline(batch_size=1, num_threads=1, device_id=device_index, prefetch_queue_depth=1)
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        pipe.set_outputs(fn.decoders.video(encoded, frames=frames, device="mixed", pad_mode="none"))
    pipe.build()
    pipe.feed_input("encoded", [data])
    pipe.feed_input("frames", [np.array([0], dtype=np.int32)])
    (out,) = pipe.run()
    shape = tuple(out.as_cpu().as_array().shape)
    if shape != (1, 1, 48, 64, 3):
        raise RuntimeError(f"decoded shape {shape}, expected (1, 1, 48, 64, 3)")
    return f"decoded 1 frame of a 64x48 H.264 clip on cuda:{device_index}"


def nvdec_checks(*, dali: bool, cuda: bool) -> list[str]:
    """libnvcuvid loadable; with a GPU and DALI, one frame really decoded on NVDEC."""
    why = load_nvcuvid()
    lines = [
        _check(
            "libnvcuvid",
            why is None,
            f"{NVCUVID} loads" if why is None else f"{NVCUVID} does not load ({why[:120]})",
            "the driver's NVDEC library: in containers give the `video` driver capability "
            "(NVIDIA_DRIVER_CAPABILITIES=compute,utility,video); without it H.264/HEVC go "
            "through PyAV, VP8/VP9/MJPEG through DALI's CPU decoder",
        )
    ]
    if not (dali and cuda and why is None):
        lines.append(
            _check(
                "NVDEC decode",
                False,
                "not tried here",
                "needs DALI, a CUDA GPU and libnvcuvid; without them vqf decodes on the CPU",
            )
        )
        return lines
    try:
        lines.append(_check("NVDEC decode", True, nvdec_one_frame(0)))
    except Exception as e:
        lines.append(
            _check(
                "NVDEC decode",
                False,
                f"failed: {type(e).__name__}: {str(e)[:200]}",
                "check the driver's video capability and DALI's CUDA major (above)",
                fail=True,
            )
        )
    return lines


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "installed")


def report(recipe: Recipe | None = None) -> str:
    lines = []
    torch_v = _version("torch")
    cuda = False
    if torch_v:
        import torch

        cuda = torch.cuda.is_available()
        dev = torch.cuda.get_device_name(0) if cuda else "none"
        built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        lines.append(_check("torch", True, f"{torch_v} ({built})"))
        lines.append(
            _check(
                "CUDA",
                cuda,
                f"device: {dev}",
                "no GPU: vqf runs one CPU rank (tiny models, CPU decode)",
            )
        )
    else:
        lines.append(_check("torch", False, "not importable", "run launch/setup.sh"))
    dali_v = _version("nvidia.dali")
    lines.append(
        _check(
            "DALI",
            bool(dali_v),
            dali_v or "not importable",
            "run launch/setup.sh (it installs the DALI of the stack it picks)",
        )
    )
    if torch_v:
        major = torch_cuda_major()
        lines.append(installed_stack())
        lines.append(stack_check(major, dali_cuda_majors()))
        lines.append(driver_check(major))
    lines.append(nvml_check())
    lines += nvdec_checks(dali=bool(dali_v), cuda=cuda)
    av_v = _version("av")
    lines.append(_check("PyAV", bool(av_v), av_v or "not importable", "pip install av"))
    lines.append(
        _check(
            "ultralytics",
            bool(_version("ultralytics")),
            _version("ultralytics") or "missing",
            "needed by the abnormal_region filter",
        )
    )
    oss = all(os.environ.get(k) for k in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"))
    lines.append(
        _check(
            "OSS credentials",
            oss,
            "set" if oss else "not set",
            "export OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_ENDPOINT (or storage.oss in the recipe)",
        )
    )
    odps = all(os.environ.get(k) for k in ("ODPS_ACCESS_ID", "ODPS_ACCESS_KEY", "ODPS_ENDPOINT"))
    lines.append(
        _check(
            "ODPS credentials",
            odps,
            "set" if odps else "not set",
            "export ODPS_ACCESS_ID, ODPS_ACCESS_KEY, ODPS_ENDPOINT for odps:// tables",
        )
    )
    if recipe is not None:
        st = recipe.storage
        lines.append(oss_signing_check(st))
        for name, root in (
            ("CPFS root", st.cpfs_root),
            ("Alluxio root", st.alluxio_root),
            ("local root", st.local_root),
        ):
            if root:
                lines.append(
                    _check(name, Path(root).is_dir(), root, "mount it or clear it in the recipe")
                )
            else:
                lines.append(f"[ -- ] {name}: not configured")
    return "\n".join(lines)
