"""End to end through `vqf run` on CPU: one row per input, typed failures, resume, two ranks."""

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

from vqf.schema import decode_record

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
EXPECTED_FAILURES = {
    "html_error_page": "not_a_video",
    "truncated_download": None,  # corrupt_stream or not_a_video, depending on where it was cut
    "missing_file": "not_found",
}


@pytest.fixture(scope="module")
def sample_table(tmp_path_factory) -> Path:
    from vqf.ops.demo import sample_rows

    folder = tmp_path_factory.mktemp("samples")
    rows = sample_rows(folder / "videos")
    rows.append({"video_id": "bad_info", "video_path": "x.mp4", "info": "{oops"})
    table = folder / "input.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows) + "this line is not json\n")
    return table


def vqf(*args: str, cwd: Path, timeout: float = 240, wait: bool = True):
    env = dict(os.environ, VQF_LOG="WARNING", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "vqf", *args]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_rows(out: Path) -> list[dict]:
    rows = []
    for shard in sorted(out.glob("part-*.jsonl")):
        rows += [decode_record(json.loads(line)) for line in shard.read_text().splitlines()]
    return rows


def input_ids(table: Path) -> list[str]:
    ids = []
    for line in table.read_text().splitlines():
        try:
            ids.append(str(json.loads(line).get("video_id", "")))
        except json.JSONDecodeError:
            ids.append("")
    return ids


def test_demo_recipe_end_to_end(sample_table, tmp_path):
    out = tmp_path / "results"
    result = vqf(
        "run", str(DEMO), "--tables", str(sample_table), "--outputs", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_rows(out)
    assert Counter(r["result_info"]["row"] for r in rows) == Counter(
        range(len(input_ids(sample_table)))
    )
    by_id = {r["video_id"]: r for r in rows}

    for vid, etype in EXPECTED_FAILURES.items():
        ri = by_id[vid]["result_info"]
        assert ri["succeed"] == "false", vid
        if etype:
            assert ri["error"]["type"] == etype, (vid, ri["error"])
    assert by_id["bad_info"]["result_info"]["error"]["type"] == "row_malformed"
    assert by_id[""]["result_info"]["error"]["type"] == "row_malformed"  # the non-JSON line

    good = [r for r in rows if r["result_info"]["succeed"] == "true"]
    # every sample that is a video succeeds; only the broken inputs fail
    broken = set(EXPECTED_FAILURES) | {"bad_info", ""}
    failed = {r["video_id"]: r["result_info"].get("error") for r in rows if r not in good}
    assert set(failed) == broken, failed
    for r in good:  # the decode stage counted the frames it decoded for the row
        assert r["result_info"]["frames_decoded"] > 0, r["video_id"]
    for r in good:
        info, ri = r["info"], r["result_info"]
        assert ri["random_init"], "random models must be declared in the row"
        for key in (
            "vfx_filter",
            "simcam_filter",
            "seg_simcam_filter",
            "inverse_seg_simcam_filter",
            "rotate_vertical_filter",
            "seg_low_quality_filter",
            "abnormal_region_info",
        ):
            assert key in info, (r["video_id"], key)
        for key in ("vfx_filter", "simcam_filter", "rotate_vertical_filter"):
            obj = info[key]
            assert abs(sum(obj["result"].values()) - 1) < 1e-3
            assert obj["label"] == max(obj["result"], key=obj["result"].get)
        segs = info["seg_simcam_filter"]
        assert list(segs) == [str(i) for i in range(len(segs))]
        assert segs["0"]["duration"][0] == pytest.approx(0.0, abs=0.1)
        assert set(info["inverse_seg_simcam_filter"]) == set(segs)
    # segment durations follow each video's length: 5 s at 4 s every 3 s -> [0,4]; the 1 s
    # tail is not longer than tail_min_s, so it gets no window of its own
    h264 = by_id["h264_moving"]["info"]["seg_simcam_filter"]
    assert [s["duration"] for s in h264.values()] == [[0.0, 4.0]]
    still = by_id["h264_still"]["info"]["seg_simcam_filter"]  # 3 s: one window over all of it
    assert len(still) == 1 and still["0"]["duration"][1] == pytest.approx(3.0, abs=0.15)
    assert (out / "resolved_config.yaml").exists()


def test_rerun_writes_nothing_twice_and_sigkill_resumes(sample_table, tmp_path):
    out = tmp_path / "results"
    args = [
        "run",
        str(DEMO),
        "--tables",
        str(sample_table),
        "--outputs",
        str(out),
        "--set",
        "engine.writer_flush_rows=1",
        "--set",
        "decode.batch_size=1",
    ]
    proc = vqf(*args, cwd=tmp_path, wait=False)
    shard = out / "part-00000.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and len(shard.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_rows(out))
    assert 0 < partial < len(input_ids(sample_table))
    again = vqf(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert Counter(r["result_info"]["row"] for r in read_rows(out)) == Counter(
        range(len(input_ids(sample_table)))
    )
    third = vqf(*args, cwd=tmp_path)  # everything done: nothing more written
    assert third.returncode == 0
    assert len(read_rows(out)) == len(input_ids(sample_table))


def test_two_cpu_ranks_split_the_table(sample_table, tmp_path):
    out = tmp_path / "results"
    result = vqf(
        "run",
        str(DEMO),
        "--tables",
        str(sample_table),
        "--outputs",
        str(out),
        "--gpus",
        "2",
        "--set",
        "engine.device=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shards = sorted(p.name for p in out.glob("part-*.jsonl"))
    assert shards == ["part-00000.jsonl", "part-00001.jsonl"]
    assert all(len((out / s).read_text().splitlines()) > 0 for s in shards)
    assert Counter(r["result_info"]["row"] for r in read_rows(out)) == Counter(
        range(len(input_ids(sample_table)))
    )


def test_run_that_cannot_start_exits_nonzero_with_a_message(tmp_path):
    bad = vqf(
        "run",
        str(DEMO),
        "--tables",
        str(tmp_path / "none.jsonl"),
        "--outputs",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert bad.returncode == 3 and "none.jsonl" in bad.stderr
    typo = vqf("run", str(DEMO), "--set", "engine.clipbatch=2", cwd=tmp_path)
    assert typo.returncode == 2 and "clipbatch" in typo.stderr


def test_the_heap_is_trimmed_at_most_once_per_interval():
    import platform

    from vqf.engine.memory import trim_heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    trim_heap(every_s=0.0)  # whatever came before, the clock starts now
    assert trim_heap(every_s=3600.0) is False  # not yet time: the next caller returns at once
    assert trim_heap(every_s=0.0) is True


def test_heap_thresholds_map_large_blocks_alone_and_keep_smaller_ones_in_the_heap():
    """After the rank's set-up a 2 MiB block comes from the heap (no mapping of its own, no
    fresh pages on every use) and a 16 MiB one gets its own mapping, given back when freed."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    script = """
import ctypes, ctypes.util
from vqf.engine.memory import MMAP_BYTES, fix_heap_thresholds
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
assert fix_heap_thresholds()
def mapped(size):  # is a block of `size` bytes a mapping of its own (starts a region)?
    ptr = libc.malloc(size)
    starts = [int(line.split("-")[0], 16) for line in open("/proc/self/maps")]
    own = any(0 <= ptr - start <= 4096 for start in starts)
    libc.free(ptr)
    return own
print(mapped(MMAP_BYTES // 2), mapped(MMAP_BYTES * 4))
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
