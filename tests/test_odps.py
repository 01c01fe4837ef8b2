"""ODPS tables offline: pyodps's real TableSchema and Record with a faked tunnel.

Only the network objects are fakes (the client's table lookups, tunnel sessions, readers and
writers). Every call they receive is checked against the real pyodps signature, and recorded,
so the tests assert on the slices, records and block ids that would reach the service.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import json

import pytest
from odps.models import Column, Partition, Record, TableSchema
from odps.tunnel.tabletunnel import TableDownloadSession, TableTunnel, TableUploadSession

from vqf.config import OdpsSinkConfig, SinksConfig
from vqf.engine.work import select_work
from vqf.errors import TableError
from vqf.schema import INPUT_COLUMNS, OUTPUT_COLUMNS
from vqf.tables import open_sink, open_source, shard_range
from vqf.tables.odps_table import BLOCK_ID_LIMIT, OdpsSink, client_from_env


def checked(real, *args, **kwargs):
    """Binds a call to the real pyodps method's signature (TypeError if pyodps would refuse it)."""
    inspect.signature(real).bind(None, *args, **kwargs)


def schema(columns, partitions=("ds",)) -> TableSchema:
    return TableSchema(
        columns=[Column(name=c, type="string") for c in columns],
        partitions=[Partition(name=p, type="string") for p in partitions],
    )


class FakeTable:
    def __init__(self, name, table_schema):
        self.name = name
        self.table_schema = table_schema
        self.data: dict[str | None, list[Record]] = {}  # partition spec -> committed rows

    def exist_partition(self, spec):
        return spec in self.data


class FakeOdps:
    """Stands in for `odps.ODPS` and the tunnel service behind it; records every call."""

    def __init__(self):
        self.tables: dict[tuple[str, str], FakeTable] = {}
        self.uploads: dict[str, FakeUpload] = {}
        self.downloads: dict[str, FakeDownload] = {}
        self.created: list[tuple[str, str, str | None]] = []  # (kind, table, partition)
        self.fail_block_once: set[int] = set()
        self.lose_commit_reply_once = False
        self._ids = itertools.count()

    def add_table(self, project, name, table_schema):
        table = FakeTable(name, table_schema)
        self.tables[(project, name)] = table
        return table

    def exist_table(self, name, project=None):
        return (project, name) in self.tables

    def get_table(self, name, project=None):
        return self.tables[(project, name)]

    def new_id(self, kind):
        return f"{kind}-{next(self._ids)}"


class FakeTunnel:
    """Replaces `odps.tunnel.TableTunnel`; sessions live in the FakeOdps 'server'."""

    def __init__(self, odps=None, project=None, **kwargs):
        checked(TableTunnel.__init__, odps, project=project, **kwargs)
        self.server = odps

    def create_download_session(self, table, **kwargs):
        checked(TableTunnel.create_download_session, table, **kwargs)
        session_id = kwargs.get("download_id")
        if session_id is None:
            spec = kwargs.get("partition_spec")
            session = FakeDownload(self.server.new_id("down"), list(table.data.get(spec, [])))
            self.server.downloads[session.id] = session
            self.server.created.append(("download", table.name, spec))
        return self.server.downloads[session_id or session.id]

    def create_upload_session(self, table, **kwargs):
        checked(TableTunnel.create_upload_session, table, **kwargs)
        session_id = kwargs.get("upload_id")
        if session_id is None:
            spec = kwargs.get("partition_spec")
            assert kwargs.get("create_partition") == bool(spec)
            session = FakeUpload(self.server, self.server.new_id("up"), table, spec)
            self.server.uploads[session.id] = session
            self.server.created.append(("upload", table.name, spec))
        return self.server.uploads[session_id or session.id]


class FakeDownload:
    def __init__(self, session_id, rows):
        self.id = session_id
        self.rows = rows
        self.count = len(rows)
        self.reads: list[tuple[int, int, list | None]] = []

    def open_record_reader(self, start, count, **kwargs):
        checked(TableDownloadSession.open_record_reader, start, count, **kwargs)
        self.reads.append((start, count, kwargs.get("columns")))
        return FakeReader(self.rows[start : start + count])


class FakeReader(list):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeUpload:
    def __init__(self, server, session_id, table, spec):
        self.server = server
        self.id = session_id
        self.table = table
        self.spec = spec
        self.blocks: dict[int, list[Record]] = {}
        self.opened: list[int] = []
        self.commits: list[list[int]] = []
        self.status = TableUploadSession.Status.Normal

    def new_record(self, values=None):
        checked(TableUploadSession.new_record, values)
        return Record(schema=self.table.table_schema, values=values)

    def open_record_writer(self, block_id=None, **kwargs):
        checked(TableUploadSession.open_record_writer, block_id, **kwargs)
        assert 0 <= block_id < BLOCK_ID_LIMIT
        self.opened.append(block_id)
        return FakeWriter(self, block_id)

    def get_block_list(self):
        return list(self.blocks)

    def reload(self):
        checked(TableUploadSession.reload)

    def commit(self, blocks):
        checked(TableUploadSession.commit, blocks)
        if self.status is not TableUploadSession.Status.Normal:  # a session commits once
            raise RuntimeError(f"session {self.id} is {self.status.value}")
        if sorted(blocks) != sorted(self.blocks):  # what the real service refuses
            raise RuntimeError(f"blocks {blocks} do not match the server's {list(self.blocks)}")
        self.commits.append(list(blocks))
        rows = [r for b in sorted(blocks) for r in self.blocks[b]]
        self.table.data.setdefault(self.spec, []).extend(rows)
        self.status = TableUploadSession.Status.Closed
        if self.server.lose_commit_reply_once:
            self.server.lose_commit_reply_once = False
            raise ConnectionError("connection reset by peer (after the commit went in)")


class FakeWriter:
    def __init__(self, session, block_id):
        self.session, self.block_id, self.records = session, block_id, []

    def write(self, record):
        assert isinstance(record, Record)
        self.records.append(record)
        if self.block_id in self.session.server.fail_block_once and len(self.records) == 2:
            self.session.server.fail_block_once.discard(self.block_id)
            self.session.blocks[self.block_id] = list(self.records)  # a partial block lands
            raise ConnectionError("connection reset by peer")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:  # the server keeps a block when its writer closes cleanly
            self.session.blocks[self.block_id] = self.records
        return False


@pytest.fixture
def server(monkeypatch):
    import odps.tunnel

    monkeypatch.setattr(odps.tunnel, "TableTunnel", FakeTunnel)
    return FakeOdps()


def input_records(table_schema, n, spec="20240101"):
    return [
        Record(
            schema=table_schema,
            values=[f"v{i}", "bucket", f"videos/{i}.mp4", "tag", json.dumps({"i": i}), spec],
        )
        for i in range(n)
    ]


def out_row(i):
    return {
        "video_id": f"v{i}",
        "oss_bucket": "bucket",
        "video_oss_url": f"oss://bucket/{i}.mp4",
        "video_tag": "",
        "info": {"vfx": {"label": "normal"}},
        "result_info": json.dumps({"succeed": "true"}),
    }


def test_ranks_read_their_slices_of_one_shared_session(server):
    table = server.add_table("proj", "videos", schema(INPUT_COLUMNS))
    table.data["ds=20240101"] = input_records(table.table_schema, 10)
    uri = "odps://proj/videos/ds=20240101"
    first = open_source(uri, odps_client=server)
    sources = [first] + [
        open_source(uri, odps_client=server, session_id=first.session_id) for _ in range(2)
    ]
    rows = []
    for rank, source in enumerate(sources):
        start, count = shard_range(source.count(), rank=rank, world_size=3)
        rows += source.read(start=start, count=count)
    assert server.created == [("download", "videos", "ds=20240101")]  # one session, shared
    assert server.downloads[first.session_id].reads == [(0, 3, None), (3, 3, None), (6, 4, None)]
    assert [r["video_id"] for r in rows] == [f"v{i}" for i in range(10)]
    assert rows[4] == {
        "video_id": "v4",
        "oss_bucket": "bucket",
        "video_path": "videos/4.mp4",
        "video_tag": "tag",
        "info": '{"i": 4}',  # left as stored: a JSON string
    }
    assert list(first.read(start=10, count=5)) == []


def committed_ids(table, spec="ds=20240101") -> list[str]:
    return [r["video_id"] for r in table.data.get(spec, [])]


def test_each_rank_commits_its_own_windows_as_it_goes(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    uri = "odps://proj/results/ds=20240101"
    sinks = SinksConfig(odps=OdpsSinkConfig(commit_every_rows=4, block_rows=3))
    rank0 = open_sink(uri, rank=0, world_size=2, odps_client=server, sinks=sinks)
    rank1 = open_sink(uri, rank=1, world_size=2, odps_client=server, sinks=sinks)
    rank0.write([out_row(i) for i in range(2)])
    assert committed_ids(table) == [] and server.uploads == {}  # no block of 3 is full yet
    rank0.write([out_row(i) for i in range(2, 4)])  # the window is full: committed now
    assert committed_ids(table) == ["v0", "v1", "v2", "v3"]
    rank1.write([out_row(i) for i in range(10, 15)])  # one window of 4, one row open
    assert committed_ids(table)[4:] == ["v10", "v11", "v12", "v13"]
    rank1.close()
    rank0.close()  # nothing left in rank 0's window: no session, no commit
    assert committed_ids(table)[8:] == ["v14"]
    sessions = list(server.uploads.values())
    assert [s.opened for s in sessions] == [[0, 1], [0, 1], [0]]  # ids per window: 0, 1, ...
    assert [s.commits for s in sessions] == [[[0, 1]], [[0, 1]], [[0]]]
    assert server.created == [("upload", "results", "ds=20240101")] * 3
    rows = table.data["ds=20240101"]
    assert all(isinstance(v, str) for r in rows for v in r.values[: len(OUTPUT_COLUMNS)])
    assert json.loads(rows[0]["info"]) == {"vfx": {"label": "normal"}}


def test_a_window_also_closes_by_time(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    now = [0.0]
    sink = OdpsSink(
        "odps://proj/results/ds=20240101",
        rank=0,
        world_size=1,
        client=server,
        columns=OUTPUT_COLUMNS,
        commit_every_rows=1000,
        commit_every_s=10.0,
        clock=lambda: now[0],
    )
    sink.write([out_row(0)])
    now[0] = 9.0
    sink.tick()
    assert committed_ids(table) == []
    now[0] = 10.5
    sink.tick()  # what the writer calls while no rows come
    assert committed_ids(table) == ["v0"]
    now[0] = 20.0
    sink.write([out_row(1)])  # a new window starts at its first row
    now[0] = 29.0
    sink.write([out_row(2)])
    assert committed_ids(table) == ["v0"]
    now[0] = 30.0
    sink.write([out_row(3)])  # checked on every write too
    assert committed_ids(table) == ["v0", "v1", "v2", "v3"]
    assert sink.windows_committed == 2 and sink.rows_committed == 4


def input_rows(n):
    return [
        {"video_id": f"v{i}", "oss_bucket": "b", "video_path": f"{i}.mp4", "info": "{}"}
        for i in range(n)
    ]


def run_rows(server, rows, *, crash_after=None, **options):
    """What a rank does with its sink: skip what the table holds, write the rest one row at a
    time. `crash_after` rows in, the process dies (no close). Returns the sink."""
    sink = OdpsSink(
        "odps://proj/results/ds=20240101",
        rank=0,
        world_size=1,
        client=server,
        columns=OUTPUT_COLUMNS,
        **options,
    )
    work = select_work(rows, start=0, done=sink.done_rows())
    for n, item in enumerate(work):
        if n == crash_after:
            return sink
        sink.write([out_row(int(item.video_id[1:]))])
    sink.close()
    return sink


def test_a_crash_between_write_and_commit_loses_that_window_and_the_rerun_writes_it_once(
    server,
):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    rows = input_rows(10)
    run_rows(server, rows, crash_after=6, commit_every_rows=4, block_rows=1)
    assert committed_ids(table) == ["v0", "v1", "v2", "v3"]
    unfinished = list(server.uploads.values())[-1]
    assert sorted(unfinished.blocks) == [0, 1] and unfinished.commits == []  # uploaded only
    rerun = run_rows(server, rows, commit_every_rows=4, block_rows=1)
    assert rerun.rows_committed == 6
    assert committed_ids(table) == [f"v{i}" for i in range(10)]


def test_a_crash_right_after_a_commit_makes_the_rerun_write_nothing_twice(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    rows = input_rows(10)
    run_rows(server, rows, crash_after=8, commit_every_rows=4)
    assert committed_ids(table) == [f"v{i}" for i in range(8)]
    rerun = run_rows(server, rows, commit_every_rows=4)
    assert rerun.rows_committed == 2
    assert committed_ids(table) == [f"v{i}" for i in range(10)]
    again = run_rows(server, rows, commit_every_rows=4)
    assert again.rows_committed == 0 and len(server.uploads) == 3  # no session opened


def test_a_commit_whose_reply_is_lost_is_not_committed_twice(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    server.lose_commit_reply_once = True
    run_rows(server, input_rows(6), commit_every_rows=4)
    assert committed_ids(table) == [f"v{i}" for i in range(6)]
    assert [len(s.commits) for s in server.uploads.values()] == [1, 1]


def test_window_options_are_checked(server):
    server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    with pytest.raises(TableError, match="commit_every_s = 0"):
        run_rows(server, [], commit_every_s=0)
    with pytest.raises(TableError, match="more than the tunnel's 20000 blocks") as info:
        run_rows(server, [], commit_every_rows=20001, block_rows=1)
    assert "sinks.odps.block_rows" in info.value.hint


def test_a_retried_block_overwrites_instead_of_duplicating(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS, partitions=()))
    server.fail_block_once.add(0)
    with_sink = open_sink("odps://proj/results", rank=0, world_size=1, odps_client=server)
    with_sink.write([out_row(i) for i in range(5)])
    with_sink.close()
    (session,) = server.uploads.values()
    assert session.opened == [0, 0]  # the failed block went up again under its own id
    assert [r["video_id"] for r in table.data[None]] == [f"v{i}" for i in range(5)]


def test_done_counts_read_the_committed_output(server):
    table = server.add_table("proj", "results", schema(OUTPUT_COLUMNS))
    spec = "ds=20240101"
    table.data[spec] = [
        Record(schema=table.table_schema, values=[vid, "", "", "", "{}", "{}", "20240101"])
        for vid in ["a", "b", "a"]
    ]
    sink = open_sink(f"odps://proj/results/{spec}", rank=1, world_size=4, odps_client=server)
    assert sink.done_rows().by_video_id == collections.Counter({"a": 2, "b": 1})
    reads = [d.reads for d in server.downloads.values()]
    assert reads == [[(0, 3, ["video_id", "result_info"])]]  # two columns, the whole partition
    fresh = open_sink("odps://proj/results/ds=20240102", rank=0, world_size=1, odps_client=server)
    assert fresh.done_rows().by_video_id == collections.Counter()


def test_odps_errors_name_the_fix(server):
    server.add_table("proj", "parted", schema(INPUT_COLUMNS))
    server.add_table("proj", "narrow", schema(["video_id"]))
    with pytest.raises(TableError, match="does not exist") as info:
        open_sink("odps://proj/missing/ds=1", rank=0, world_size=1, odps_client=server)
    assert "CREATE TABLE IF NOT EXISTS proj.missing (video_id STRING" in info.value.hint
    assert "PARTITIONED BY (ds STRING)" in info.value.hint
    with pytest.raises(TableError, match="partitioned by ds") as info:
        open_source("odps://proj/parted", odps_client=server)
    assert "odps://proj/parted/ds=..." in info.value.hint
    with pytest.raises(TableError, match="partition odps://proj/parted/ds=2 does not exist"):
        open_source("odps://proj/parted/ds=2", odps_client=server)
    with pytest.raises(TableError, match="lacks columns oss_bucket"):
        open_sink("odps://proj/narrow/ds=1", rank=0, world_size=1, odps_client=server)
    assert server.created == []


def test_credentials_come_from_the_environment_and_stay_out_of_errors(monkeypatch):
    for name in ("ODPS_ACCESS_ID", "ODPS_ACCESS_KEY", "ODPS_ENDPOINT", "ODPS_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ODPS_ACCESS_ID", "id-secret-123")
    with pytest.raises(TableError) as info:
        open_source("odps://proj/videos/ds=1")
    assert "ODPS_ACCESS_KEY" in str(info.value) and "ODPS_ENDPOINT" in str(info.value)
    assert "id-secret-123" not in str(info.value)
    monkeypatch.setenv("ODPS_ACCESS_KEY", "key-secret-456")
    monkeypatch.setenv("ODPS_ENDPOINT", "http://service.example/api")
    import odps.core

    # the entry object asks the endpoint for its logview hosts; that is network, so faked
    monkeypatch.setattr(odps.core.ODPS, "get_logview_host", lambda self: "http://logview.example")
    monkeypatch.setattr(odps.core.ODPS, "get_job_insight_host", lambda self: None)
    client = client_from_env("proj")
    assert client.project == "proj"
    assert client.endpoint == "http://service.example/api"
