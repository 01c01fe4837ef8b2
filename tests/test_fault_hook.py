"""VQF_FAULT: parsing, and every kind doing what it says (kill and abort in a child process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from vqf import faults
from vqf.errors import ConfigError
from vqf.faults import Fault, InjectedFault, fault_point, parse_faults

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def fresh_hangs():
    faults.reset()
    yield
    faults.release_hangs()  # a hang left behind by a failed test returns


def test_entries_parse_and_video_ids_may_hold_colons():
    assert parse_faults("fetch:v1:kill, decode:a:b:c:hang,,model:*:oom") == (
        Fault("fetch", "v1", "kill"),
        Fault("decode", "a:b:c", "hang"),
        Fault("model", "*", "oom"),
    )
    assert parse_faults("") == ()


@pytest.mark.parametrize(
    "text, words",
    [
        ("fetchx:v1:kill", ["unknown stage 'fetchx'", "allowed stages: fetch, probe"]),
        ("probe:v1:explode", ["unknown kind 'explode'", "allowed kinds: kill, abort, hang"]),
        ("probe:kill", ["is not STAGE:VIDEO_ID:KIND"]),
        ("probe::kill", ["is not STAGE:VIDEO_ID:KIND"]),
    ],
)
def test_a_bad_entry_is_refused_naming_what_is_allowed(text, words):
    with pytest.raises(ConfigError) as info:
        parse_faults(text)
    for word in words:
        assert word in str(info.value)


def test_the_hook_is_inert_unless_an_entry_matches(monkeypatch):
    monkeypatch.delenv("VQF_FAULT", raising=False)
    fault_point("decode", "v1")
    monkeypatch.setenv("VQF_FAULT", "decode:v2:raise,probe:v1:raise")
    fault_point("decode", "v1")  # other video, other stage
    with pytest.raises(InjectedFault, match="injected raise at probe of v1"):
        fault_point("probe", "v1")
    monkeypatch.setenv("VQF_FAULT", "write:*:raise")  # a new value is parsed again
    with pytest.raises(InjectedFault, match="at write of anything"):
        fault_point("write", "anything")
    monkeypatch.setenv("VQF_FAULT", "write:v1:nonsense")
    with pytest.raises(ConfigError, match="unknown kind"):
        fault_point("write", "v1")


def test_oom_raises_torchs_out_of_memory_error(monkeypatch):
    monkeypatch.setenv("VQF_FAULT", "model:v1:oom")
    with pytest.raises(torch.OutOfMemoryError, match="injected oom at model of v1"):
        fault_point("model", "v1")


def test_hang_blocks_until_released_or_for_its_seconds(monkeypatch):
    monkeypatch.setenv("VQF_FAULT", "fetch:v1:hang")
    returned = threading.Event()
    thread = threading.Thread(target=lambda: (fault_point("fetch", "v1"), returned.set()))
    thread.start()
    assert not returned.wait(0.3)  # still hanging
    faults.release_hangs()
    assert returned.wait(5)
    faults.reset()
    monkeypatch.setenv("VQF_FAULT_HANG_S", "0.2")
    start = time.monotonic()
    fault_point("fetch", "v1")
    assert 0.2 <= time.monotonic() - start < 5


@pytest.mark.parametrize("kind, sig", [("kill", signal.SIGKILL), ("abort", signal.SIGABRT)])
def test_kill_and_abort_end_the_process_by_that_signal(kind, sig):
    code = "from vqf.faults import fault_point; fault_point('decode', 'v1'); print('survived')"
    env = dict(
        os.environ, VQF_FAULT=f"decode:v1:{kind}", PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER=""
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == -sig
    assert "survived" not in result.stdout


def test_vqf_run_refuses_a_bad_value_before_any_video(tmp_path):
    env = dict(os.environ, VQF_FAULT="decode:v1:explode", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqf",
            "run",
            str(ROOT / "pipelines" / "demo.yaml"),
            "--outputs",
            str(tmp_path / "out"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "unknown kind 'explode'" in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
