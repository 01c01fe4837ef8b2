"""The live dashboard, rendered into a recording console, and the choice of display."""

from __future__ import annotations

import io
import pickle

import pytest
from rich.console import Console

from vqf.errors import ConfigError
from vqf.ops.dashboard import Dashboard, gpu_reading, make_status, render, summary_table
from vqf.ops.status import StatusLine

MB = 1024**2


def snapshot(rank: int, **kw) -> dict:
    """A rank's snapshot as RankStats.snapshot() publishes it, with the rank's extra keys."""
    snap = {
        "rank": rank,
        "world_size": 2,
        "device": f"cuda:{rank}",
        "elapsed_s": 1800.0,
        "total": 100,
        "written": 0,
        "videos_per_s": 0.0,
        "counters": {},
        "failures": {},
        "recent_failures": [],
        "stage_seconds": {},
        "stage_items": {},
        "queues": {},
    }
    snap.update(kw)
    return snap


@pytest.fixture
def snaps() -> list[dict]:
    return [
        snapshot(
            0,
            written=60,
            videos_per_s=60 / 1800,
            counters={
                "rows_written": 60,
                "succeeded": 57,
                "rows_skipped_done": 10,
                "video_seconds": 57 * 20.0,
                "fallback_cpu_decode": 4,
            },
            failures={"not_found": 2, "decode_failed": 1},
            recent_failures=[
                ("vid_a", "not_found", "oss://bkt/a.mp4 not found"),
                ("vid_b", "decode_failed", "corrupt frame 12"),
                ("vid_c", "not_found", "oss://bkt/c.mp4 not found"),
            ],
            queues={"prepare": 7, "write": 2},
            gpu={"util": 91.0, "mem_used_gb": 41.5, "mem_total_gb": 80.0, "nvdec": 63.0},
            storage={
                "oss": {"hits": 60, "misses": 0, "errors": 3, "bytes": 600 * MB, "seconds": 12.0},
                "cpfs": {"hits": 0, "misses": 63, "errors": 0, "bytes": 0, "seconds": 0.2},
            },
        ),
        snapshot(
            1,
            written=30,
            videos_per_s=30 / 1800,
            counters={"rows_written": 30, "succeeded": 30, "video_seconds": 30 * 20.0},
        ),
    ]


def text_of(renderable, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_dashboard_shows_progress_ranks_failures_and_storage(snaps):
    text = text_of(render(snaps))
    # 60 + 10 skipped + 30 of 200 rows; 90 written in 1800 s
    assert "100/200 rows" in text
    assert "0.05 videos/s" in text
    assert "ETA 33m20s" in text  # 100 left at 0.05/s
    assert "CPU-decode fallbacks 4" in text
    lines = text.splitlines()
    rank0 = next(line for line in lines if "cuda:0" in line)
    assert "70/100" in rank0 and "prepare 7 write 2" in rank0
    assert "91%" in rank0 and "41.5/80 GiB" in rank0 and "63%" in rank0
    rank1 = next(line for line in lines if "cuda:1" in line)
    assert "30/100" in rank1 and rank1.count("n/a") == 3  # no GPU readings from rank 1
    assert "failures: 3" in text
    assert next(line for line in lines if "not_found" in line and "│" in line).split()[-2] == "2"
    for video in ("vid_a", "vid_b", "vid_c"):
        assert video in text
    assert "corrupt frame 12" in text
    oss = next(line for line in lines if line.strip("│ ").startswith("oss"))
    assert "95%" in oss and "50.0" in oss  # 60 of 63 tries; 600 MB in 12 s


def test_no_failures_and_no_storage_leave_their_tables_out():
    text = text_of(render([snapshot(0, device="cpu", written=5, counters={"rows_written": 5})]))
    assert "5/100 rows" in text
    assert "failures" not in text and "storage tiers" not in text


def test_summary_table_has_totals_failure_types_and_video_hours_per_gpu_hour(snaps):
    text = text_of(summary_table(snaps))
    rows = {
        line.strip("│ ").rsplit("│", 1)[0].strip(): line.strip("│ ").rsplit("│", 1)[-1].strip()
        for line in text.splitlines()
        if "│" in line
    }
    assert rows["rows in"] == "200"
    assert rows["rows written"] == "90"
    assert rows["succeeded"] == "87"
    assert rows["failed"] == "3"
    assert rows["not_found"] == "2" and rows["decode_failed"] == "1"
    assert rows["wall time"] == "30m00s"
    assert rows["videos/s"] == "0.05"
    # 87 videos x 20 s = 0.483 video-hours over 2 GPUs x 0.5 h
    assert rows["video-hours per GPU-hour"] == "0.48"


def test_summary_on_cpu_ranks_says_so():
    snap = snapshot(
        0, device="cpu", written=3, counters={"rows_written": 3, "video_seconds": 360.0}
    )
    text = text_of(summary_table([snap]))
    assert "n/a (CPU ranks)" in text
    assert "video-hours per rank-hour" in text and "0.20" in text  # 0.1 h of video in 0.5 h


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_status_line_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(make_status(stream=io.StringIO()), StatusLine)
    assert isinstance(make_status(stream=_Tty()), Dashboard)
    assert isinstance(make_status(mode="plain", stream=_Tty()), StatusLine)
    assert isinstance(make_status(mode="rich", stream=io.StringIO()), Dashboard)
    with pytest.raises(ConfigError, match="fancy"):
        make_status(mode="fancy")


def test_dashboard_runs_live_then_prints_the_summary(snaps):
    board = Dashboard()
    pickle.dumps(board)  # handed to a spawned rank 0 before its first call
    console = Console(record=True, width=160, color_system=None, force_terminal=False)
    board.console = console
    early = [snapshot(0, written=1, counters={"rows_written": 1})]
    board(early, final=False)
    board(snaps, final=True)
    text = console.export_text()
    assert "vqf: job summary" in text
    assert "video-hours per GPU-hour" in text
    assert "100/200 rows" in text  # the last frame stays on screen


def test_gpu_readings_need_a_cuda_device_and_nvml():
    import importlib.util

    import torch

    assert gpu_reading("cpu") is None
    reading = gpu_reading("cuda:0")
    if importlib.util.find_spec("pynvml") is None or not torch.cuda.is_available():
        assert reading is None  # the dashboard then shows n/a
    else:
        assert set(reading) == {"util", "mem_used_gb", "mem_total_gb", "nvdec"}
        assert 0 <= reading["util"] <= 100 and 0 < reading["mem_total_gb"]
