"""Faults injected with VQF_FAULT at every stage, through `vqf run` and `launch/run.sh`.

`raise`, `oom` and `hang` become that video's failure row (hangs as TIMEOUT rows, under small
deadlines) while every other video succeeds. `kill` and `abort` take the process down; rerun
as a supervisor would, the video is tried again alone, then quarantined with a `crashed` row
naming its stage, and the job finishes with every row written exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.test_engine import read_rows

ROOT = Path(__file__).parent.parent
STAGES = ("fetch", "probe", "detect", "decode", "model", "write")
RECIPE = """
name: crashes
sampling: {whole_frames: 4, window_frames: 4, height: 32, width: 32, detect_frames: 2,
           detect_size: 64}
storage: {timeout_s: 4}
decode: {route: auto, batch_size: 1, workers: 1, timeout_s: 4}
models:
  backbone: {kind: vjepa2, size: tiny, init: random}
filters:
  vfx: {enable: true}
  borders: {enable: true}
engine: {device: cpu, clip_batch: 1, writer_flush_rows: 1, progress_every_s: 2}
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory, video_factory):
    """A recipe and a table: one video per stage to fault, and two that should succeed."""
    folder = tmp_path_factory.mktemp("crashes")
    (folder / "recipe.yaml").write_text(RECIPE)
    ids = [f"at_{s}" for s in STAGES] + ["ok0", "ok1"]
    rows = []
    for i, vid in enumerate(ids):
        path = video_factory(codec="h264", width=64, height=48, seconds=1, seed=i % 3)
        rows.append({"video_id": vid, "video_path": str(path)})
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, ids


def vqf_run(
    folder: Path, out: Path, faults: str, *extra: str, **env: str
) -> subprocess.CompletedProcess:
    env = dict(os.environ, VQF_LOG="WARNING", PYTHONPATH=str(ROOT), VQF_FAULT=faults, **env)
    cmd = [sys.executable, "-m", "vqf", "run", "recipe.yaml", "--tables", "in.jsonl",
           "--outputs", str(out), *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def check_once(rows: list[dict], ids: list[str]) -> dict[str, dict]:
    """One row per input row, by its table position (`result_info.row`); {video_id: info}."""
    positions = Counter(r["result_info"]["row"] for r in rows)
    assert positions == Counter(range(len(ids))), f"a row lost or written twice: {positions}"
    assert all(r["video_id"] == ids[r["result_info"]["row"]] for r in rows)
    return {r["video_id"]: r["result_info"] for r in rows}


@pytest.mark.parametrize(
    ("kind", "error"), [("raise", None), ("oom", "out_of_memory"), ("hang", "timeout")]
)
def test_a_fault_that_leaves_the_process_alive_fails_that_video_only(job, tmp_path, kind, error):
    folder, ids = job
    faults = ",".join(f"{s}:at_{s}:{kind}" for s in STAGES)
    out = tmp_path / "out"
    proc = vqf_run(folder, out, faults, VQF_FAULT_HANG_S="60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = check_once(read_rows(out), ids)
    for stage in STAGES:
        info = got[f"at_{stage}"]
        assert info["succeed"] == "false", (stage, info)
        assert info["error"]["stage"] == stage, (stage, info["error"])
        if error:
            assert info["error"]["type"] == error, (stage, info["error"])
    assert got["ok0"]["succeed"] == got["ok1"]["succeed"] == "true"
    assert not (out / ".vqf-journal").exists() or not any((out / ".vqf-journal").iterdir())


def supervise(folder: Path, out: Path, faults: str, *, most: int) -> list[int]:
    """Reruns `vqf run` until it exits 0, as a supervisor would; returns the exit codes."""
    codes = []
    while len(codes) < most:
        proc = vqf_run(folder, out, faults)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            return codes
    raise AssertionError(f"still failing after {most} runs: {codes}\n{proc.stderr[-2000:]}")


@pytest.mark.parametrize(
    ("stage", "kind"),
    [  # a kill in decode: tests/test_stops.py's killer among six good videos, by default
        pytest.param("decode", "kill", marks=pytest.mark.slow),
        ("probe", "abort"),
    ],
)
def test_a_video_that_kills_the_process_is_quarantined_after_two_crashes(
    job, tmp_path, stage, kind
):
    folder, ids = job
    out = tmp_path / "out"
    codes = supervise(folder, out, f"{stage}:at_{stage}:{kind}", most=4)
    # dies in the crowd, dies again alone, then gets its row: three runs
    assert len(codes) == 3 and codes[-1] == 0 and all(c != 0 for c in codes[:-1]), codes
    got = check_once(read_rows(out), ids)
    info = got[f"at_{stage}"]
    assert info["succeed"] == "false" and info["error"]["type"] == "crashed", info
    assert info["error"]["stage"] == stage
    assert all(got[v]["succeed"] == "true" for v in ids if v != f"at_{stage}"), got
    assert not any((out / ".vqf-journal").glob("*.jsonl")), "a clean finish leaves no journal"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kill", "abort"])
def test_kill_and_abort_at_every_stage(job, tmp_path, kind):
    folder, ids = job
    out = tmp_path / "out"
    faults = ",".join(f"{s}:at_{s}:{kind}" for s in STAGES)
    supervise(folder, out, faults, most=2 * len(STAGES) + 2)
    got = check_once(read_rows(out), ids)
    for stage in STAGES:
        info = got[f"at_{stage}"]
        assert info["error"]["type"] == "crashed" and info["error"]["stage"] == stage, info
    assert got["ok0"]["succeed"] == got["ok1"]["succeed"] == "true"


def test_torchrun_restarts_the_rank_and_the_job_moves_past_the_video(job, tmp_path):
    from tests.test_torchrun import RUN_SH, free_port, run_sh_env

    folder, ids = job
    out = tmp_path / "out"
    env = run_sh_env(
        VQF_FORCE_TORCHRUN="1", MAX_RESTARTS="3", MASTER_PORT=str(free_port()),
        VQF_FAULT="model:at_model:kill",
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", str(RUN_SH), "recipe.yaml", "--tables", "in.jsonl", "--outputs", str(out)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = check_once(read_rows(out), ids)
    assert got["at_model"]["error"]["type"] == "crashed"
    assert got["at_model"]["error"]["stage"] == "model"
    assert all(got[v]["succeed"] == "true" for v in ids if v != "at_model")


def test_too_many_stuck_threads_drain_the_writer_and_exit_for_a_restart(job, tmp_path):
    """Decodes that hang past their deadline leave threads nobody can stop. Past
    engine.max_stuck_threads the rank takes no new video, writes what finished, and exits
    with 75; the restart judges the rest, and no row is written twice."""
    folder, _ = job
    rows = [json.loads(line) for line in (folder / "in.jsonl").read_text().splitlines()]
    many = [dict(rows[i % len(rows)], video_id=f"v{i:02d}") for i in range(20)]
    ids = [r["video_id"] for r in many]
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in many))
    out = tmp_path / "out"
    hangs = "decode:v00:hang,decode:v01:hang"
    first = vqf_run(tmp_path, out, hangs, "--set", "engine.max_stuck_threads=1",
                    VQF_FAULT_HANG_S="60")  # fmt: skip
    assert first.returncode == 75, first.stderr[-2000:]
    assert "threads stuck past their deadlines" in first.stderr
    written = {r["video_id"]: r["result_info"] for r in read_rows(out)}
    assert {"v00", "v01"} <= set(written) and len(written) < len(ids), sorted(written)
    assert all(written[v]["error"]["type"] == "timeout" for v in ("v00", "v01"))
    again = vqf_run(tmp_path, out, "")
    assert again.returncode == 0, again.stderr[-2000:]
    got = check_once(read_rows(out), ids)
    assert all(got[v]["succeed"] == "true" for v in ids if v not in written)
