"""Stops, kills and failing outputs through `vqf run`, checked per input row (its table position).

- A video that kills the process is the only one quarantined, even with rows waiting in the
  writer at the moment of the kill.
- SIGTERM and Ctrl-C stop the run gracefully at any stage: exit 143 / 130 within the grace,
  one line saying what was written; the rerun charges no crash and writes every row once.
- Duplicate video_ids stay apart: each copy gets its own row after a kill and a rerun.
- An output that cannot be written ends the run in bounded time with one error line; the
  rerun writes every row once.
- Lanes waiting on a slow model stage are not stuck; a model stage stuck after the end of
  its input is taken over and the run still ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.test_crashes import RECIPE as CRASH_RECIPE
from tests.test_engine import read_rows

ROOT = Path(__file__).parent.parent
RECIPE = CRASH_RECIPE.replace("name: crashes", "name: stops")  # tiny clips, 4 s deadlines
STAGES = ("fetch", "probe", "detect", "decode", "model")


@pytest.fixture(scope="module")
def videos(video_factory):
    return [
        video_factory(codec="h264", width=64, height=48, seconds=1, seed=i % 3) for i in range(3)
    ]


def make_job(folder: Path, videos, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(RECIPE)
    rows = [{"video_id": v, "video_path": str(videos[i % len(videos)])} for i, v in enumerate(ids)]
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vqf", "run", "recipe.yaml", "--tables", "in.jsonl",
            "--outputs", str(out), *extra]  # fmt: skip


def environment(faults: str = "", **env: str) -> dict:
    return dict(os.environ, VQF_LOG="WARNING", PYTHONPATH=str(ROOT), VQF_FAULT=faults, **env)


def run(folder: Path, out: Path, faults: str = "", *extra: str, **env: str):
    return subprocess.run(
        command(out, *extra), cwd=folder, env=environment(faults, **env),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def start(folder: Path, out: Path, faults: str = "", *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(out, *extra), cwd=folder, env=environment(faults, **env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def once(out: Path, ids: list[str]) -> dict[int, dict]:
    """Exactly one row per input row, by table position; {position: result_info}."""
    rows = read_rows(out)
    positions = Counter(r["result_info"]["row"] for r in rows)
    assert positions == Counter(range(len(ids))), f"a row lost or written twice: {positions}"
    for r in rows:
        assert r["video_id"] == ids[r["result_info"]["row"]], r
    return {r["result_info"]["row"]: r["result_info"] for r in rows}


def entered(out: Path, video_id: str, stage: str) -> bool:
    """The crash journal says `video_id` went into `stage`."""
    for path in (out / ".vqf-journal").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if f'"video_id":"{video_id}"' in line and f'"stage":"{stage}"' in line:
                return True
    return False


def wait_for(proc: subprocess.Popen, ready, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended too early: " + proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "what the test waits for never came"
        time.sleep(0.05)


def clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "budget leak" not in stderr, stderr[-3000:]
    assert "terminate called" not in stderr, stderr[-3000:]


def test_a_killer_video_is_the_only_one_quarantined(tmp_path, videos):
    """The killer is last in the table, and finished rows wait in the writer (a 30 s flush)
    when it kills the process: none of them is charged."""
    ids = [f"ok{i}" for i in range(6)] + ["killer"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    extra = ("--set", "engine.writer_flush_rows=100", "--set", "engine.writer_flush_s=30")
    codes = []
    for _ in range(4):
        proc = run(folder, out, "decode:killer:kill", *extra)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    assert codes[-1] == 0 and len(codes) == 3, (codes, proc.stderr[-3000:])
    got = once(out, ids)
    assert got[6]["error"]["type"] == "crashed" and got[6]["error"]["stage"] == "decode"
    assert all(got[i]["succeed"] == "true" for i in range(6)), got
    clean(proc.stderr)


# the default run stops once early, once mid-decode and once in the models; `-m slow` every pair
DEFAULT_STOPS = [("fetch", signal.SIGTERM), ("decode", signal.SIGINT), ("model", signal.SIGTERM)]
STOPS = [
    pytest.param(stage, sig, marks=() if (stage, sig) in DEFAULT_STOPS else pytest.mark.slow)
    for stage in STAGES
    for sig in (signal.SIGTERM, signal.SIGINT)
]


@pytest.mark.parametrize(("stage", "sig"), STOPS)
def test_a_stop_at_any_stage_is_no_crash(tmp_path, videos, stage, sig):
    """The video `slow` hangs in `stage` past the grace; the stop comes then. The run exits
    with 128 + the signal within the grace, saying what it wrote. With max_attempts=1 a
    single charged crash would quarantine a video; the rerun writes every row, none crashed."""
    ids = ["a", "slow", "b", "c"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    settings = ("--set", "engine.max_attempts=1", "--set", "engine.grace_s=2",
                "--set", "decode.timeout_s=60", "--set", "storage.timeout_s=60")  # fmt: skip
    proc = start(folder, out, f"{stage}:slow:hang", *settings, VQF_FAULT_HANG_S="30")
    wait_for(proc, lambda: entered(out, "slow", stage))
    time.sleep(0.3)
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + sig, (proc.returncode, stderr[-3000:])
    assert took < 2 + 8, f"exit took {took:.1f}s past a 2s grace"
    assert "rows written" in stderr and "rerun the same command to resume" in stderr, stderr
    clean(stderr)
    again = run(folder, out, "", "--set", "engine.max_attempts=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "when the process died" not in again.stderr, again.stderr[-3000:]  # no charge
    got = once(out, ids)
    assert all(info["succeed"] == "true" for info in got.values()), got
    clean(again.stderr)


def test_a_second_ctrl_c_leaves_at_once_and_charges_nothing(tmp_path, videos):
    ids = ["a", "slow", "b"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    settings = ("--set", "engine.max_attempts=1", "--set", "engine.grace_s=60",
                "--set", "decode.timeout_s=60")  # fmt: skip
    proc = start(folder, out, "decode:slow:hang", *settings, VQF_FAULT_HANG_S="60")
    wait_for(proc, lambda: entered(out, "slow", "decode"))
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    clean(stderr)
    again = run(folder, out, "", "--set", "engine.max_attempts=1")
    assert again.returncode == 0, again.stderr[-3000:]
    got = once(out, ids)
    assert all(info["succeed"] == "true" for info in got.values()), got


def test_duplicate_ids_keep_their_own_rows_across_a_kill(tmp_path, videos):
    """The duplicate's failure is durable before the first copy is judged; a kill then, and
    the rerun judges the first copy: one success and one DUPLICATE_ROW, by table position."""
    ids = ["twin", "twin", "other"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    proc = start(folder, out, "probe:twin:hang", "--set", "decode.timeout_s=60",
                 VQF_FAULT_HANG_S="60")  # fmt: skip
    wait_for(proc, lambda: entered(out, "twin", "probe") and len(read_rows(out)) >= 1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = run(folder, out)
    assert again.returncode == 0, again.stderr[-3000:]
    got = once(out, ids)
    assert got[0]["succeed"] == "true", got[0]
    assert got[1]["error"]["type"] == "duplicate_row", got[1]
    assert got[2]["succeed"] == "true"


def test_an_output_that_fails_ends_the_run_with_one_line(tmp_path, videos):
    """The writer thread's write of `v3` fails as a full disk does."""
    ids = [f"v{i}" for i in range(6)]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    proc = run(folder, out, "sink:v3:full")
    assert proc.returncode == 74, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vqf: output error")]
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr[-3000:]
    assert "rows written, rerun the same command to resume" in lines[0]
    clean(proc.stderr)
    again = run(folder, out)
    assert again.returncode == 0, again.stderr[-3000:]
    got = once(out, ids)
    assert all(info["succeed"] == "true" for info in got.values()), got


def test_a_full_tmpfs_ends_the_run_with_one_line(tmp_path, videos):
    """A real full disk: outputs on a 12 KiB tmpfs that the rows outgrow."""
    ids = [f"v{i}" for i in range(16)]
    folder = make_job(tmp_path / "job", videos, ids)
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        out = mount / "out"
        proc = run(folder, out, "", "--set", f"engine.state_dir={tmp_path / 'state'}")
        assert proc.returncode == 74, (proc.returncode, proc.stderr[-3000:])
        lines = [x for x in proc.stderr.splitlines() if x.startswith("vqf: output error")]
        assert len(lines) == 1, proc.stderr[-3000:]
        clean(proc.stderr)
        whole = []  # a line torn by the full disk is not a row (the rerun repairs it)
        for line in (out / "part-00000.jsonl").read_text().splitlines():
            try:
                whole.append(json.loads(line))
            except ValueError:
                continue
        assert 0 < len(whole) < len(ids)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_lanes_waiting_on_slow_models_are_not_stuck(tmp_path, videos):
    """Each model batch takes 0.6 s (under decode.timeout_s = 2 s) and the model inbox holds
    4 clips, so the two lanes wait on it far longer than 2 s in all (12 clips): waiting is not
    work, no TIMEOUT row."""
    ids = [f"v{i}" for i in range(12)]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    proc = run(folder, out, "model:*:hang", "--set", "decode.timeout_s=2",
               "--set", "decode.pipelines=2", VQF_FAULT_HANG_S="0.6")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = once(out, ids)
    failed = {i: info["error"] for i, info in got.items() if info["succeed"] != "true"}
    assert not failed, failed
    clean(proc.stderr)


def test_a_model_stage_stuck_in_the_tail_is_taken_over_and_the_run_ends(tmp_path, videos):
    """`last`, decoded last by a single lane, hangs in the models past decode.timeout_s at the
    end of the run: its row is a TIMEOUT, the run still ends, and every row is written (the
    runtime's own test covers a worker stuck after the end marker exactly)."""
    ids = ["a", "b", "last"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    proc = run(folder, out, "model:last:hang", "--set", "decode.timeout_s=2",
               "--set", "decode.pipelines=1", VQF_FAULT_HANG_S="60")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = once(out, ids)
    assert got[2]["error"]["type"] == "timeout" and got[2]["error"]["stage"] == "model"
    assert got[0]["succeed"] == got[1]["succeed"] == "true"


@pytest.mark.slow
def test_sigterm_to_launch_run_sh_stops_two_torchrun_ranks_gracefully(tmp_path, videos):
    """launch/run.sh under torchrun with two CPU ranks: SIGTERM to the script reaches both
    ranks through torchrun; the job exits 143 with one line, and the rerun charges nothing."""
    from tests.test_torchrun import RUN_SH, free_port, run_sh_env

    ids = ["a", "slow", "b", "c"]
    folder = make_job(tmp_path / "job", videos, ids)
    out = tmp_path / "out"
    env = run_sh_env(VQF_FORCE_TORCHRUN="1", NPROC_PER_NODE="2", MAX_RESTARTS="0",
                     MASTER_PORT=str(free_port()), VQF_FAULT="decode:slow:hang",
                     VQF_FAULT_HANG_S="60")  # fmt: skip
    args = ["recipe.yaml", "--tables", "in.jsonl", "--outputs", str(out),
            "--set", "engine.max_attempts=1", "--set", "engine.grace_s=2",
            "--set", "decode.timeout_s=60"]  # fmt: skip
    proc = subprocess.Popen(["bash", str(RUN_SH), *args], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    wait_for(proc, lambda: entered(out, "slow", "decode"), timeout=240)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    assert "rerun the same command to resume" in stderr, stderr[-3000:]
    env.pop("VQF_FAULT")
    again = subprocess.run(["bash", str(RUN_SH), *args], cwd=folder, env=env, text=True,
                           capture_output=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    got = once(out, ids)
    assert all(info["succeed"] == "true" for info in got.values()), got
