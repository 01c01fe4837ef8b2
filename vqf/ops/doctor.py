"""`vqf doctor`: what this machine offers vqf, each missing piece with a hint."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from vqf.config import Recipe


def _check(name: str, ok: bool, detail: str, hint: str = "") -> str:
    mark = "ok  " if ok else "MISS"
    line = f"[{mark}] {name}: {detail}"
    return line + (f"\n         hint: {hint}" if hint and not ok else "")


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
        lines.append(_check("torch", True, f"{torch_v}"))
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
            "pip install nvidia-dali-cuda120 (launch/setup.sh does)",
        )
    )
    lines.append(
        _check(
            "NVDEC decode",
            bool(dali_v) and cuda,
            "possible (DALI mixed video decoder)" if dali_v and cuda else "not possible here",
            "needs DALI and a CUDA GPU; without them H.264/HEVC go through PyAV, VP8/VP9/MJPEG through DALI's CPU decoder",
        )
    )
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
