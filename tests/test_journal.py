"""The crash journal: videos in flight when the process dies count a crash; enough of them
quarantine the video; a clean finish leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vqf.config import EngineConfig, Recipe
from vqf.engine.journal import Crashes, Journal, crash_error, journal_path, row_key
from vqf.engine.runtime import Runtime
from vqf.engine.stats import RankStats
from vqf.engine.writer import Writer
from vqf.errors import ConfigError, ErrorType, Stage

ROOT = Path(__file__).parent.parent


def died(journal: Journal) -> Journal:
    """The process dies: nothing is closed; the next start opens the same file."""
    return Journal(journal.path, max_attempts=journal.max_attempts)


def test_a_video_in_flight_at_each_crash_is_quarantined_after_max_attempts(tmp_path):
    a, b = row_key(index=0, video_id="a"), row_key(index=1, video_id="b")
    journal = Journal(tmp_path / "j.jsonl", max_attempts=2)
    assert journal.crashed() == {}
    journal.enter("a", a, "fetch")
    journal.enter("b", b, "fetch")
    journal.leave(b)  # b's row was written
    journal.enter("a", a, "decode")

    journal = died(journal)
    assert journal.crashed() == {a: Crashes(1, "decode", "a")}
    assert journal.quarantined(a) is None  # one more attempt
    assert journal.quarantined(b) is None
    journal.enter("a", a, "model")

    journal = died(journal)
    assert journal.crashed() == {a: Crashes(2, "model", "a")}
    assert journal.quarantined(a) == "model"
    error = crash_error(journal.crashed()[a], max_attempts=2)
    assert error.type is ErrorType.CRASHED and error.stage is Stage.MODEL
    assert "died 2 times" in error.message and "engine.max_attempts" in error.hint


def test_duplicate_video_ids_are_told_apart_by_their_row(tmp_path):
    first, second = row_key(index=3, video_id="v"), row_key(index=9, video_id="v")
    journal = Journal(tmp_path / "j.jsonl", max_attempts=1)
    journal.enter("v", first, "probe")
    journal.enter("v", second, "probe")
    journal.leave(first)
    journal = died(journal)
    assert journal.quarantined(first) is None
    assert journal.quarantined(second) == "probe"


def test_a_clean_finish_removes_the_journal_and_an_unclean_one_keeps_it(tmp_path):
    path = tmp_path / "state" / "j.jsonl"
    journal = Journal(path, max_attempts=2)
    journal.enter("a", "0:a", "write")
    journal.close(clean=False)
    assert path.exists()
    journal = died(journal)
    assert journal.crashed()["0:a"].attempts == 1
    journal.enter("a", "0:a", "fetch")
    journal.leave("0:a")
    journal.close(clean=True)
    assert not path.exists()
    assert Journal(path, max_attempts=2).crashed() == {}


def test_a_written_row_keeps_its_crash_count_until_the_clean_finish(tmp_path):
    """A row handed to the sink may still be lost (an ODPS window not committed yet): if the
    process dies before the finish, the video must not start again from zero crashes."""
    journal = Journal(tmp_path / "j.jsonl", max_attempts=2)
    journal.enter("a", "0:a", "decode")
    journal = died(journal)
    journal.enter("a", "0:a", "decode")
    journal = died(journal)
    assert journal.quarantined("0:a") == "decode"
    journal.leave("0:a")  # its crashed row went to the writer
    journal = died(journal)  # and the window holding it was never committed
    assert journal.quarantined("0:a") == "decode"  # the same crashed row again, once


def test_open_compacts_the_file_and_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path, max_attempts=3)
    for i in range(200):
        key = row_key(index=i, video_id=f"v{i}")
        for stage in ("fetch", "probe", "decode", "model", "write"):
            journal.enter(f"v{i}", key, stage)
        journal.leave(key)
    journal.enter("v7", "7:v7", "decode")
    with open(path, "a") as f:
        f.write('{"op": "enter", "key": "8:v8", "st')  # the process died mid-line
    journal = died(journal)
    assert journal.crashed() == {"7:v7": Crashes(1, "decode", "v7")}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"op": "crash", "key": "7:v7", "video_id": "v7", "attempts": 1, "stage": "decode"}
    ]


def test_a_process_killed_in_a_stage_counts_a_crash(tmp_path):
    """A real SIGKILL through the fault hook, with the journal entered just before it."""
    path = tmp_path / "j.jsonl"
    code = (
        "import sys; from pathlib import Path\n"
        "from vqf.engine.journal import Journal\n"
        "from vqf.faults import fault_point\n"
        "j = Journal(Path(sys.argv[1]), max_attempts=2)\n"
        "j.enter('v1', '0:v1', 'decode')\n"
        "fault_point('decode', 'v1')\n"
        "j.leave('0:v1'); j.close(clean=True)\n"
    )
    env = dict(os.environ, VQF_FAULT="decode:v1:kill", PYTHONPATH=str(ROOT))
    for attempt in (1, 2):
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)], env=env, timeout=60, capture_output=True
        )
        assert result.returncode == -9
        assert Journal(path, max_attempts=2).crashed()["0:v1"].attempts == attempt
    assert Journal(path, max_attempts=2).quarantined("0:v1") == "decode"


def test_a_bad_stage_or_attempt_count_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_attempts = 0"):
        Journal(tmp_path / "j.jsonl", max_attempts=0)
    journal = Journal(tmp_path / "j.jsonl", max_attempts=2)
    with pytest.raises(ValueError, match="'decoding'"):
        journal.enter("a", "0:a", "decoding")


def test_the_journal_lives_beside_local_outputs_or_in_state_dir(tmp_path):
    local = Recipe(outputs=str(tmp_path / "out"))
    assert journal_path(local, 3) == tmp_path / "out" / ".vqf-journal" / "rank-00003.jsonl"
    as_uri = Recipe(outputs=f"file://{tmp_path}/out")
    assert journal_path(as_uri, 0) == tmp_path / "out" / ".vqf-journal" / "rank-00000.jsonl"
    odps = Recipe(outputs="odps://proj/results/ds=1")
    with pytest.raises(ConfigError, match="needs engine.state_dir") as info:
        journal_path(odps, 0)
    assert "engine.state_dir=" in info.value.hint
    stated = replace(odps, engine=EngineConfig(state_dir=str(tmp_path / "state")))
    path = journal_path(stated, 1)
    assert path.name == "rank-00001.jsonl"
    assert path.parent.parent == tmp_path / "state" / ".vqf-journal"
    other_day = replace(stated, outputs="odps://proj/results/ds=2")
    assert journal_path(other_day, 1).parent != path.parent  # jobs keep their own journals
    assert journal_path(stated, 1) == path


class ListSink:
    def __init__(self):
        self.rows, self.ticks = [], 0

    def write(self, records):
        self.rows += records

    def tick(self):
        self.ticks += 1


def record(video_id: str) -> dict[str, str]:
    return {"video_id": video_id, "result_info": json.dumps({"succeed": "true"})}


def test_the_writer_reports_keys_once_written_and_ticks_an_idle_sink(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", max_attempts=2)
    sink = ListSink()
    writer = Writer(sink, flush_rows=2, stats=RankStats(), on_written=journal.leave_many)
    runtime = Runtime(device="cpu", fail=None, stats=RankStats())
    runtime.start(writer)
    for i in range(3):
        journal.enter(f"v{i}", f"{i}:v{i}", "write")
        writer.put(record(f"v{i}"), key=f"{i}:v{i}")
    writer.put(record("dup"))  # a row that was never journalled
    deadline = time.monotonic() + 10
    while sink.ticks == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.drain(runtime)
    assert [r["video_id"] for r in sink.rows] == ["v0", "v1", "v2", "dup"]
    assert journal.in_flight() == {}
    assert sink.ticks >= 1
