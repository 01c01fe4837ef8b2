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
from vqf.bench.gpu_check.report import figures, render_markdown

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-check")
    out, work = root / "out", root / "work"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VQF_LOG="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "vqf.bench.gpu_check", "--smoke", "--out", str(out),
         "--work", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
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

    video = r["videos"]
    assert (video["codec"], video["width"], video["height"]) == ("h264", 64, 48)
    assert video["frames"] == round(SMOKE.seconds * SMOKE.fps) and video["b_frames"] is True

    tests = r["pytest"]
    assert tests["tests"] >= 15 and tests["skipped"] == tests["tests"]  # no CUDA: all skip
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

    f = report["figures"]
    assert f["pytest"]["skipped"] == tests["tests"]
    assert set(f["nvdec_fps_by_sessions"]) == {str(n) for n in SMOKE.sessions}
    assert f["vqf_videos_per_s"] == profile["videos_per_s"]
    assert f["speedup"] == pytest.approx(profile["videos_per_s"] / base["videos_per_s"])
    assert f["floor_datasheet"]["reached"] > 0 and f["floor_measured"]["reached"] > 0


def test_smoke_report_reads_as_markdown(smoke):
    _, out = smoke
    text = (out / "gpu-check.md").read_text()
    for name in SECTIONS:
        assert f"## {name}: ok" in text
    assert "(no result)" not in text and "missing" not in text
    assert "| videos/s |" in text and "vqf profile: stage2 on cpu" in text
    assert "| seed baseline |" in text


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
