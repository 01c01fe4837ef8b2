"""Local tables: JSONL and Parquet sources and sinks, sharding, resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vqf.errors import ConfigError, TableError
from vqf.schema import OUTPUT_COLUMNS
from vqf.tables import open_sink, open_source, shard_range


def out_row(i: int, **extra) -> dict[str, str]:
    return {
        "video_id": f"v{i}",
        "oss_bucket": "bucket",
        "video_oss_url": f"oss://bucket/videos/{i}.mp4",
        "video_tag": "tag",
        "info": json.dumps({"vfx": {"label": "normal", "prob": 0.9}}),
        "result_info": json.dumps({"succeed": "true", "ü": "ünïcode"}, ensure_ascii=False),
        **extra,
    }


def in_row(i: int) -> dict:
    return {
        "video_id": f"v{i}",
        "oss_bucket": "b",
        "video_path": f"p/{i}.mp4",
        "video_tag": "",
        "info": json.dumps({"use_alluxio": i % 2 == 0}),
    }


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_all(uri) -> list[dict]:
    source = open_source(str(uri))
    return list(source.read(start=0, count=source.count()))


def jsonl_lines(directory: Path) -> list[dict]:
    """Every line of every JSONL shard, parsed (a torn line makes json.loads raise)."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


@pytest.mark.parametrize("name", ["out", "out.jsonl", "out.parquet"])
def test_sink_round_trip(tmp_path, name):
    rows = [out_row(i) for i in range(7)]
    with open_sink(str(tmp_path / name), rank=0, world_size=1) as sink:
        sink.write(rows[:3])
        sink.write([])
        sink.write(rows[3:])
    assert read_all(tmp_path / name) == rows
    shards = sorted(p.name for p in (tmp_path / name).iterdir() if not p.name.startswith("."))
    if name.endswith(".parquet"):
        assert shards == ["part-00000-000000.parquet", "part-00000-000001.parquet"]
    else:
        assert shards == ["part-00000.jsonl"]


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_sink_writes_every_column_as_a_string(tmp_path, name):
    record = {"video_id": 7, "info": {"b": 1, "a": [1, 2]}, "video_tag": None, "extra": "x"}
    with open_sink(str(tmp_path / name), rank=0, world_size=1) as sink:
        sink.write([record])
    (row,) = read_all(tmp_path / name)
    assert list(row) == list(OUTPUT_COLUMNS)
    assert row["video_id"] == "7"
    assert json.loads(row["info"]) == {"a": [1, 2], "b": 1}
    assert row["video_tag"] == "" and row["result_info"] == ""


def test_jsonl_and_parquet_files_as_sources(tmp_path):
    rows = [in_row(i) for i in range(5)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=2)
    assert read_all(tmp_path / "in.jsonl") == rows
    assert read_all(tmp_path / "in.parquet") == rows
    parquet = open_source(str(tmp_path / "in.parquet"))
    assert list(parquet.read(start=1, count=3)) == rows[1:4]  # crosses row groups
    assert list(parquet.read(start=4, count=10)) == rows[4:]
    assert open_source(f"file://{tmp_path}/in.jsonl").count() == 5


def test_directory_of_shards_reads_in_name_order(tmp_path):
    rows = [in_row(i) for i in range(9)]
    shards = tmp_path / "table"
    shards.mkdir()
    # written out of name order, mixed formats, plus files that are not shards
    write_jsonl(shards / "c.jsonl", rows[6:])
    pq.write_table(pa.Table.from_pylist(rows[2:6]), shards / "b.parquet")
    write_jsonl(shards / "a.jsonl", rows[:2])
    (shards / "notes.txt").write_text("not a shard")
    (shards / ".b.parquet.tmp").write_bytes(b"partial")
    source = open_source(str(shards))
    assert source.count() == 9
    assert list(source.read(start=0, count=9)) == rows
    assert list(source.read(start=1, count=6)) == rows[1:7]  # spans all three files
    assert list(source.read(start=9, count=3)) == []


@pytest.mark.parametrize("total", [0, 1, 2, 3, 4, 7, 10, 101])
def test_shards_cover_every_row_once(total):
    for world_size in range(1, 6):
        seen = []
        for rank in range(world_size):
            start, count = shard_range(total, rank=rank, world_size=world_size)
            assert start == len(seen)  # contiguous, in rank order
            seen += range(start, start + count)
        assert seen == list(range(total))


def test_shard_rows_read_back_once(tmp_path):
    rows = [in_row(i) for i in range(11)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    source = open_source(str(tmp_path / "in.jsonl"))
    for world_size in range(1, 6):
        got = []
        for rank in range(world_size):
            start, count = shard_range(source.count(), rank=rank, world_size=world_size)
            got += source.read(start=start, count=count)
        assert got == rows
    assert shard_range(2, rank=3, world_size=5) == (1, 0)  # more ranks than rows: some get none


@pytest.mark.parametrize("rank,world_size", [(0, 0), (2, 2), (-1, 3)])
def test_shard_range_rejects_bad_ranks(rank, world_size):
    with pytest.raises(ConfigError):
        shard_range(10, rank=rank, world_size=world_size)


def test_malformed_jsonl_lines_become_records(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps(in_row(0)),
        '{"video_id": "v1", "video_path": ',  # cut off
        "[1, 2]",  # JSON, but not a record
        "",  # blank lines are not rows
        json.dumps(in_row(4)),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"video_id": "\xff"}\n')
    source = open_source(str(path))
    assert source.count() == 5
    got = list(source.read(start=0, count=5))
    assert got[0] == in_row(0) and got[3] == in_row(4)
    assert got[1]["_line"] == 2 and "not valid JSON" in got[1]["_malformed"]
    assert got[2]["_line"] == 3 and "not an object" in got[2]["_malformed"]
    assert got[4]["_line"] == 6 and "UTF-8" in got[4]["_malformed"]


@pytest.mark.parametrize(
    "torn",
    [
        b'{"video_id": "v9", "oss_buck',  # cut mid-line
        b'{"video_id": "v9"}',  # whole object, but its newline never made it
        b'{"video_id": "v9", "oss_buck\n',  # newline but garbage
    ],
)
def test_jsonl_resume_after_a_torn_write(tmp_path, torn):
    out = tmp_path / "out"
    with open_sink(str(out), rank=0, world_size=1) as sink:
        sink.write([out_row(i) for i in range(3)])
    with open(out / "part-00000.jsonl", "ab") as f:
        f.write(torn)
    sink = open_sink(str(out), rank=0, world_size=1)
    assert sink.done_rows().by_video_id == {"v0": 1, "v1": 1, "v2": 1}
    sink.write([out_row(3), out_row(4)])
    sink.close()
    ids = [row["video_id"] for row in jsonl_lines(out)]
    assert ids == ["v0", "v1", "v2", "v3", "v4"]


def test_done_counts_see_every_rank_of_any_world_size(tmp_path):
    out = tmp_path / "out.jsonl"
    for rank in range(3):
        with open_sink(str(out), rank=rank, world_size=3) as sink:
            sink.write([out_row(rank), out_row(10)])
    # a shard of a rank the next run lacks was torn; rank 0 repairs it on open
    with open(out / "part-00002.jsonl", "ab") as f:
        f.write(b'{"video_id": "v2')
    with open_sink(str(out), rank=0, world_size=2) as sink:
        assert sink.done_rows().by_video_id == {"v0": 1, "v1": 1, "v2": 1, "v10": 3}
    assert len(jsonl_lines(out)) == 6


def test_parquet_resume_removes_temps_and_continues_numbering(tmp_path):
    out = tmp_path / "out.parquet"
    with open_sink(str(out), rank=0, world_size=2) as sink:
        sink.write([out_row(0)])
    (out / ".part-00000-000001.parquet.tmp").write_bytes(b"PAR1 killed mid-write")
    (out / ".part-00001-000000.parquet.tmp").write_bytes(b"rank 1 may be writing this")
    (out / ".part-00004-000000.parquet.tmp").write_bytes(b"from a run with 5 ranks")
    sink = open_sink(str(out), rank=0, world_size=2)
    left = sorted(p.name for p in out.glob(".part-*"))
    assert left == [".part-00001-000000.parquet.tmp"]  # another live rank's temp is kept
    assert sink.done_rows().by_video_id == {"v0": 1}
    sink.write([out_row(1)])
    sink.close()
    assert (out / "part-00000-000001.parquet").exists()
    assert [r["video_id"] for r in read_all(out)] == ["v0", "v1"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from vqf.tables import open_sink
    sink = open_sink(sys.argv[1], rank=0, world_size=1)
    big = "x" * 200_000
    for i in range(100_000):
        sink.write([{"video_id": f"v{i}-{k}", "info": big} for k in range(8)])
        if i == 2:
            print("writing", flush=True)
    """
)


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_kill_9_mid_write_leaves_a_readable_output(tmp_path, name):
    out = tmp_path / name
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout.readline() == b"writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_sink(str(out), rank=0, world_size=1) as sink:
        done = sink.done_rows().by_video_id
        assert len(done) >= 24 and set(done.values()) == {1}
        sink.write([out_row(-1)])
    rows = read_all(out)
    assert len(rows) == len(done) + 1
    assert {r["video_id"] for r in rows} == set(done) | {"v-1"}
    assert not list(out.glob(".*.tmp"))


def test_two_writers_of_one_shard_are_refused(tmp_path):
    with open_sink(str(tmp_path / "out"), rank=1, world_size=2):
        with pytest.raises(TableError, match="another process"):
            open_sink(str(tmp_path / "out"), rank=1, world_size=2)
    open_sink(str(tmp_path / "out"), rank=1, world_size=2).close()  # free after close


URI_HINT = "odps://project/table[/partition]"


@pytest.mark.parametrize(
    "make,uri,message,hint",
    [
        (None, "missing.jsonl", "does not exist", URI_HINT),
        ("garbage", "bad.parquet", "cannot read Parquet", "complete Parquet file"),
        ("garbage", "table.csv", "unknown format", URI_HINT),
        ("dir", "empty", "no *.jsonl or *.parquet", URI_HINT),
        (None, "s3://bucket/table.jsonl", "unknown table scheme", URI_HINT),
        (None, "odps://project", "bad ODPS table", URI_HINT),
        (None, "odps://project/table/ds", "bad partition spec", "ds=20240101,hh=03"),
        (None, "odps://project/table/ds=1/extra", "bad ODPS table", URI_HINT),
        (None, "", "empty", URI_HINT),
    ],
)
def test_bad_sources_raise_table_error_with_a_hint(tmp_path, make, uri, message, hint):
    if make == "garbage":
        (tmp_path / uri).write_bytes(b"not a table")
    elif make == "dir":
        (tmp_path / uri).mkdir()
    if uri and "://" not in uri:
        uri = str(tmp_path / uri)
    with pytest.raises(TableError, match=re.escape(message)) as info:
        open_source(uri)
    assert hint in info.value.hint


def test_bad_sinks_raise_table_error(tmp_path):
    (tmp_path / "file.jsonl").write_text("")
    with pytest.raises(TableError, match="not a dataset directory"):
        open_sink(str(tmp_path / "file.jsonl"), rank=0, world_size=1)
    with pytest.raises(TableError, match="unknown table scheme"):
        open_sink("oss://bucket/out", rank=0, world_size=1)
    with pytest.raises(ConfigError):
        open_sink(str(tmp_path / "out"), rank=1, world_size=1)


@pytest.mark.parametrize("name", ["out", "out.parquet"])
def test_rows_are_done_by_table_position_not_by_video_id(tmp_path, name):
    """Two input rows share a video_id; the output holds the second one's row only (the
    first was in flight when the run died). The first is still to do, the second is not."""
    from vqf.engine.work import select_work

    out = tmp_path / name
    with open_sink(str(out), rank=0, world_size=1) as sink:
        sink.write([out_row(7, result_info=json.dumps({"succeed": "false", "row": 1}))])
    done = open_sink(str(out), rank=0, world_size=1).done_rows()
    assert done.rows == {1} and not done.by_video_id
    inputs = [{"video_id": "v7", "video_path": "/a.mp4"}] * 2 + [
        {"video_id": "v8", "video_path": "/b.mp4"}
    ]
    work = select_work(inputs, start=0, done=done)
    assert [item.index for item in work] == [0, 2]
    assert all(item.error is None for item in work)
