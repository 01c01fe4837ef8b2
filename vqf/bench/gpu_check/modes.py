"""The two kinds of run: the GPU check on an H100/H200, and its smoke run on a CPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STAGE2 = ROOT / "pipelines" / "stage2.yaml"
# In the order of what matters most when a run is cut short: the environment, the test video,
# the GPU claims of tests/test_gpu_paths.py, the figures, then the rest of `pytest -m gpu`.
SECTIONS = ("env", "videos", "gpu_paths", "backbone", "profile", "baseline", "nvdec", "gpu_tests")
PATHS_TESTS = "tests/test_gpu_paths.py"
REPORT, RESULTS, LOG = "gpu-check.md", "gpu-check.json", "gpu-check.log"


@dataclass(frozen=True)
class Mode:
    """Sizes and time limits of one kind of run."""

    name: str
    device: str
    width: int  # the generated video
    height: int
    seconds: float
    fps: float
    gop: int
    sessions: tuple[int, ...]  # NVDEC sessions in flight, one measurement each
    session_videos: int  # videos each measurement decodes at least, spread over its sessions
    route: str  # decode.route of the nvdec section
    backbone: str  # V-JEPA 2 preset
    clip_frames: int
    clip_size: int
    clip_batch: int
    dtypes: tuple[str, ...]
    repeats: int  # timed backbone calls per dtype
    matmul: int  # side of the square product that gives the matrix rate
    videos: int  # rows of the profile
    baseline_videos: int  # the first rows of those, for the seed's design (CPU-bound: slow)
    baseline_workers: int
    tests: tuple[
        str, ...
    ]  # gpu_tests: `pytest -m gpu` over these, tests/test_gpu_paths.py left out
    require_gpu: bool
    budget_s: float  # the whole check; `--budget` for another
    limits: dict[str, float] = field(default_factory=dict)  # a section not named gets the rest
    overrides: tuple[str, ...] = ()  # of pipelines/stage2.yaml, after the check's own


# 390 s in all, so that with the machine's start (1-2 min), the wheels' transfer and their
# install the check fits 10 minutes (README, "GPU check", which gives each section's estimate
# on an H100: about 4.5 minutes in all). A limit is what a section may take, not what it is
# expected to take; time a section leaves unused goes to gpu_tests, last, which gets the rest
# (at least 35 s). The seed's design resizes every clip's 1080p frames on the CPU, about 45
# core-seconds per 10 s video, so it runs 4 videos on 4 workers; vqf runs 16 with the recipe's
# 8 decode lanes.
GPU = Mode(
    name="gpu", device="cuda:0", width=1920, height=1080, seconds=10.0, fps=30.0, gop=60,
    sessions=(1, 2, 4, 8, 14), session_videos=4, route="nvdec",
    backbone="large", clip_frames=48, clip_size=256, clip_batch=16,
    dtypes=("bfloat16", "float16"), repeats=8, matmul=8192,
    videos=16, baseline_videos=4, baseline_workers=4,
    tests=("tests",), require_gpu=True, budget_s=390.0,
    limits={"env": 25, "videos": 25, "gpu_paths": 80, "backbone": 35, "profile": 70,
            "baseline": 75, "nvdec": 45},
)  # fmt: skip
# On a CPU the limits only catch a hang: a shared CPU can be several times slower than usual.
SMOKE = Mode(
    name="smoke", device="cpu", width=64, height=48, seconds=3.0, fps=10.0, gop=10,
    sessions=(1, 2), session_videos=2, route="auto",
    backbone="tiny", clip_frames=8, clip_size=32, clip_batch=2,
    dtypes=("float32", "bfloat16"), repeats=2, matmul=256,
    videos=2, baseline_videos=2, baseline_workers=1,
    tests=("tests/test_stacks.py",), require_gpu=False, budget_s=400.0,
    limits={"env": 40, "videos": 30, "gpu_paths": 50, "backbone": 40, "profile": 70,
            "baseline": 50, "nvdec": 40},
    overrides=(
        "engine.device=cpu", "sampling.whole_frames=8", "sampling.window_frames=8",
        "sampling.height=32", "sampling.width=32", "sampling.detect_size=64",
        "sampling.detect_frames=2", "models.backbone.size=tiny", "models.rov_backbone.size=tiny",
        "decode.workers=1", "decode.pipelines=2", "engine.clip_batch=4",
    ),
)  # fmt: skip
