"""The GPU check's smoke mode on this CPU: every section runs the code the GPU run runs, with
tiny sizes, and leaves a report with numbers in it; a section past its limit is recorded."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqf.bench.gpu_check import SECTIONS, SMOKE, run_section
from vqf.bench.gpu_check.modes import LOG
from vqf.bench.gpu_check.report import figures, measured_floors, render_markdown

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    out, work = root / "out", root / "work"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VQF_LOG="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "vqf.bench.gpu_check", "--smoke", "--out", str(out),
         "--work", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    return done, out


def test_smoke_run_reports_every_section_with_numbers(smoke):
    done, out = smoke
    log = (out / LOG).read_text() if (out / LOG).exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert list(report["sections"]) == list(SECTIONS)
    assert {name: e["status"] for name, e in report["sections"].items()} == dict.fromkeys(
        SECTIONS, "ok"
    )
    assert report["mode"] == "smoke" and "finished" in report
    r = {name: e["result"] for name, e in report["sections"].items()}

    assert r["env"]["torch"] and r["env"]["device_used"] == "cpu"
    assert not r["env"]["dali"].startswith("n/a") and "libnvcuvid" in r["env"]
    assert r["env"]["nvdec_one_frame"] == "not tried: no CUDA device"

    video = r["videos"]
    assert (video["codec"], video["width"], video["height"]) == ("h264", 64, 48)
    assert video["frames"] == round(SMOKE.seconds * SMOKE.fps) and video["b_frames"] is True

    paths, rest = r["gpu_paths"], r["gpu_tests"]
    assert paths["tests"] >= 15 and paths["skipped"] == paths["tests"]  # no CUDA: all skip
    assert "tests/test_gpu_paths.py" in paths["command"]
    assert rest["tests"] >= 1 and rest["skipped"] == rest["tests"]
    assert "--ignore=tests/test_gpu_paths.py" in rest["command"]
    for tests in (paths, rest):
        assert tests["failures"] == tests["errors"] == 0

    rows = r["nvdec"]["rows"]
    assert [row["sessions"] for row in rows] == list(SMOKE.sessions)
    for row in rows:
        assert row["errors"] == [] and row["routes"] == ["pyav"]
        assert row["frames_decoded"] >= row["frames_planned"] > 0
        assert row["decode_fps"] > 0 and row["videos_per_s"] > 0

    backbone = r["backbone"]
    assert backbone["tokens_per_clip"] == (SMOKE.clip_frames // 2) * (SMOKE.clip_size // 16) ** 2
    assert set(backbone["dtypes"]) == set(SMOKE.dtypes)
    for name, d in backbone["dtypes"].items():
        assert d["finite"] is True and d["tflop_per_s"] > 0 and d["ms_per_call"] > 0, name
        assert backbone["matmul"][name] > 0
        measured = SMOKE.clip_batch * backbone["tflop_per_clip"] / (d["ms_per_call"] / 1e3)
        assert math.isclose(d["tflop_per_s"], measured, rel_tol=1e-6)

    profile, base = r["profile"], r["baseline"]
    assert profile["succeeded"] == profile["videos"] == SMOKE.videos
    assert profile["videos_per_s"] > 0 and profile["floors"] is None  # floors need a GPU
    assert profile["reference_floors"]["binding"][1] > 0
    assert json.loads((out / "profile.json").read_text())["succeeded"] == SMOKE.videos
    assert base["succeeded"] == base["videos"] == SMOKE.baseline_videos
    assert base["videos_per_s"] > 0 and base["workers"] == SMOKE.baseline_workers
    assert len(base["finished_s"]) == SMOKE.baseline_videos
    # saved after each video, so a baseline cut off at its limit keeps the videos it finished
    for n in range(1, SMOKE.baseline_videos + 1):
        assert f"baseline: saved after {n} of {SMOKE.baseline_videos} videos" in log

    f = report["figures"]
    assert f["pytest"]["skipped"] == paths["tests"] + rest["tests"]
    assert f["gpu_paths"]["tests"] == paths["tests"]
    assert set(f["nvdec_fps_by_sessions"]) == {str(n) for n in SMOKE.sessions}
    assert f["vqf_videos_per_s"] == profile["videos_per_s"]
    assert f["speedup"] == pytest.approx(profile["videos_per_s"] / base["videos_per_s"])
    assert f["floor_datasheet"]["reached"] > 0 and f["floor_measured"]["reached"] > 0
    # the model floor takes the rate of the dtype the profile ran in (fp32 on the CPU)
    assert profile["precision"]["backbone"]["dtype"] == "fp32"
    assert f["floor_measured"]["model_dtype"] == "float32"
    model_rate = backbone["dtypes"]["float32"]["tflop_per_s"]
    tflop = profile["workload"]["tflop_per_video"]
    assert f["floor_measured"]["model"] == pytest.approx(model_rate / tflop)


def test_smoke_report_reads_as_markdown(smoke):
    _, out = smoke
    text = (out / "gpu-check.md").read_text()
    for name in SECTIONS:
        assert f"## {name}: ok" in text
    assert "(no result)" not in text and "missing" not in text
    assert "| videos/s |" in text and "vqf profile: stage2 on cpu" in text
    assert "| seed baseline |" in text


def test_only_reruns_the_named_sections_and_keeps_the_others_results(smoke, tmp_path):
    """The second call of a check: `--only` with the same work folder reruns those sections
    and the report still holds every section, the others from the first call."""
    _, first_out = smoke
    first = json.loads((first_out / "gpu-check.json").read_text())
    out = tmp_path / "again"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VQF_LOG="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "vqf.bench.gpu_check", "--smoke", "--only", "videos",
         "--out", str(out), "--work", first["work"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["only"] == ["videos"] and list(report["sections"]) == list(SECTIONS)
    again = report["sections"]["videos"]
    assert again["status"] == "ok" and "earlier" not in again
    assert again["result"]["path"] == first["sections"]["videos"]["result"]["path"]
    for name in SECTIONS:
        if name != "videos":
            assert report["sections"][name]["earlier"] == first["started"], name
            assert report["sections"][name]["result"] == first["sections"][name]["result"]
    assert report["figures"]["speedup"] == first["figures"]["speedup"]
    text = (out / "gpu-check.md").read_text()
    assert "## videos: ok\n" in text and f"## profile: ok (earlier: {first['started']})" in text
    bad = subprocess.run(
        [sys.executable, "-m", "vqf.bench.gpu_check", "--smoke", "--only", "videos,nvdc"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown sections ['nvdc']" in bad.stdout


def test_a_section_past_its_limit_is_recorded_and_the_report_still_renders(tmp_path):
    entry = run_section(
        "backbone", mode=SMOKE, out=tmp_path, work=tmp_path, limit=0.5
    )  # importing torch alone takes longer
    assert entry["status"] == "timed out" and entry["seconds"] < 10
    report = {
        "mode": "smoke",
        "started": "now",
        "budget_s": 1.0,
        "sections": {"backbone": entry, "profile": {"status": "skipped", "error": "0 s left"}},
    }
    report["figures"] = figures(report)
    text = render_markdown(report)
    assert "## backbone: timed out" in text and "## profile: skipped" in text
    assert "- videos/s: vqf missing, seed baseline missing, speedup missing" in text
    assert "- floor (measured here): missing" in text and "- V-JEPA 2 TFLOP/s: missing" in text


def test_the_measured_model_floor_takes_the_rate_of_the_profiles_dtype():
    """On Hopper `auto` runs the backbones in bf16: the model floor must use the bf16 rate,
    not fp16's, and say nothing rather than borrow another dtype's rate."""
    backbone = {"dtypes": {"float16": {"tflop_per_s": 600.0}, "bfloat16": {"tflop_per_s": 450.0}}}
    profile = {
        "videos_per_s": 3.0,
        "workload": {"frames_decoded_per_video": 300, "tflop_per_video": 60.0},
        "precision": {
            "backbone": {"dtype": "bf16", "finite": True},
            "rov_backbone": {"dtype": "bf16", "finite": True},
        },
    }
    nvdec = [{"decode_fps": 4500.0}, {"decode_fps": 3000.0}]
    floor = measured_floors(profile, nvdec, backbone)
    assert floor["model_dtype"] == "bfloat16" and floor["model"] == pytest.approx(450 / 60)
    assert floor["decode"] == pytest.approx(4500 / 300) and floor["binding"] == "model"
    assert floor["reached"] == pytest.approx(3.0 / (450 / 60))
    fp32 = {**profile, "precision": {"backbone": {"dtype": "fp32", "finite": True}}}
    assert "model" not in measured_floors(fp32, nvdec, backbone)
