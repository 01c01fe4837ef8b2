"""launch/run.sh: its help, bad settings, and two "nodes" on this machine splitting one table."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUN_SH = ROOT / "launch" / "run.sh"

RECIPE = """
name: two_nodes
sampling: {whole_frames: 8, window_frames: 8, height: 32, width: 32}
decode: {route: auto, batch_size: 2, workers: 1}
models:
  backbone: {kind: vjepa2, size: tiny, init: random}
filters:
  vfx: {enable: true}
engine: {device: cpu, clip_batch: 8, progress_every_s: 2}
"""


def run_sh_env(**extra: str) -> dict[str, str]:
    """This test's interpreter as the launcher's venv, used as it is (never installed into)."""
    env = dict(
        os.environ,
        VQF_VENV=sys.prefix,
        VQF_SKIP_SETUP="1",
        VQF_LOG="WARNING",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_explains_one_and_many_nodes():
    result = subprocess.run(
        ["bash", str(RUN_SH), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=run_sh_env(),
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: launch/run.sh RECIPE")
    for word in ("NNODES=", "MASTER_ADDR", "RDZV_ENDPOINT", "NPROC_PER_NODE", "VQF_FORCE_TORCHRUN"):
        assert word in result.stdout


def test_bad_node_count_is_refused_with_its_name(tmp_path):
    result = subprocess.run(
        ["bash", str(RUN_SH), "recipe.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=run_sh_env(NNODES="two"),
    )
    assert result.returncode == 2
    assert "NNODES=two is not a whole number" in result.stderr


@pytest.fixture
def table(tmp_path) -> Path:
    from vqf.video.synth import make_video

    rows = []
    for i in range(4):
        path = tmp_path / f"v{i}.mp4"
        make_video(path, codec="h264", width=64, height=48, seconds=1.0, fps=10, seed=i)
        rows.append(
            {
                "video_id": f"v{i}",
                "oss_bucket": "",
                "video_path": str(path),
                "video_tag": "t",
                "info": "{}",
            }
        )
    rows.append(
        {
            "video_id": "gone",
            "oss_bucket": "",
            "video_path": str(tmp_path / "gone.mp4"),
            "video_tag": "t",
            "info": "{}",
        }
    )
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_two_nodes_split_the_table_and_write_every_row_once(table, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "results"
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            ["bash", str(RUN_SH), str(recipe), "--tables", str(table), "--outputs", str(out)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=run_sh_env(
                NNODES="2",
                NODE_RANK=str(node),
                NPROC_PER_NODE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                RDZV_ID=f"test-{port}",
                VQF_FORCE_TORCHRUN="1",
                MAX_RESTARTS="0",
                VQF_LOG="INFO",  # the ranks' start-up lines (torch threads)
            ),
        )
        for node in (0, 1)
    ]
    logs = []
    try:
        for node in nodes:
            logs.append(node.communicate(timeout=240)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n----\n".join(logs)

    shards = sorted(out.glob("part-*.jsonl"))
    assert [s.name for s in shards] == ["part-00000.jsonl", "part-00001.jsonl"]
    per_shard = [[json.loads(line) for line in s.read_text().splitlines()] for s in shards]
    assert all(per_shard), "each node's rank writes part of the table"
    ids = Counter(row["video_id"] for rows in per_shard for row in rows)
    assert ids == Counter(["v0", "v1", "v2", "v3", "gone"])
    failed = [
        r for rows in per_shard for r in rows if json.loads(r["result_info"])["succeed"] == "false"
    ]
    assert [r["video_id"] for r in failed] == ["gone"]
    # rank 0's node reports the whole job, both ranks included
    assert sum("5 rows in, 5 written now" in log and "2 rank(s)" in log for log in logs) == 1
    # each CPU rank takes its share of the node's cores for torch, not one thread per core
    cores = len(os.sched_getaffinity(0))
    assert all(f"{cores} torch threads, 1 rank(s) on this node" in log for log in logs), logs


def test_cpu_ranks_of_a_node_share_its_cores_for_torch(monkeypatch):
    import torch

    from vqf.engine.launch import share_cores

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert share_cores(local_ranks=1) == cores == torch.get_num_threads()
        assert share_cores(local_ranks=cores * 2) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice stands
        torch.set_num_threads(before)
        assert share_cores(local_ranks=cores * 2) == before
    finally:
        torch.set_num_threads(before)
