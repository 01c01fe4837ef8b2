"""ODPS (MaxCompute) tables through pyodps's table tunnel: `odps://project/table[/partition]`.

Tested offline only: with pyodps's own TableSchema and Record types and faked tunnel sessions;
it has not been run against a live ODPS service from this repository.

Reading: one download session per table partition; each rank reads its slice of it with
`open_record_reader(start, count)`. Rank 0 creates the session and shares `session_id` (the
engine passes it through the torch.distributed store); a rank given no id creates its own.

Writing: each rank commits its own rows in windows, so a crash loses at most one window and
nothing waits for the end of the job. A window is one upload session of the rank's own; it
closes after `commit_every_rows` rows or `commit_every_s` seconds since its first row
(checked on every write and on `tick()`), and at `close()`. Rows go up in blocks of
`block_rows` with ids 0, 1, ... within the window's session (deterministic: a retried block
overwrites itself instead of duplicating rows), and the window's `commit` makes them visible
at once. A window not committed when the process dies is never visible: its rows have no
output yet, so a rerun (reading committed rows through `done_rows()`) writes them again,
once.

Credentials come from ODPS_ACCESS_ID, ODPS_ACCESS_KEY and ODPS_ENDPOINT (ODPS_PROJECT is the
default project, else the URI's); they are never logged or put in errors.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vqf.errors import TableError
from vqf.tables.base import URI_HINT, Done, check_rank, check_slice, output_record

log = logging.getLogger(__name__)

BLOCK_ID_LIMIT = 20000
DEFAULT_BLOCK_ROWS = 10000
BLOCK_ATTEMPTS = 3
COMMIT_ATTEMPTS = 3
CREDENTIAL_VARS = ("ODPS_ACCESS_ID", "ODPS_ACCESS_KEY", "ODPS_ENDPOINT")

_NAME = r"[A-Za-z0-9_]+"
_URI = re.compile(rf"odps://({_NAME})/({_NAME})(?:/([^/]+))?/?")
_PARTITION = re.compile(rf"{_NAME}=[^,=/]+(?:,{_NAME}=[^,=/]+)*")


@dataclass(frozen=True)
class OdpsUri:
    project: str
    table: str
    partition: str = ""  # "ds=20240101,hh=03"; "" for an unpartitioned table

    def __str__(self) -> str:
        tail = f"/{self.partition}" if self.partition else ""
        return f"odps://{self.project}/{self.table}{tail}"


def parse_uri(uri: str) -> OdpsUri:
    """Splits `odps://project/table[/k=v[,k=v...]]`; anything else raises TableError."""
    match = _URI.fullmatch(uri.strip())
    if not match:
        raise TableError(f"bad ODPS table {uri!r}", hint=URI_HINT)
    project, table, partition = match.group(1), match.group(2), match.group(3) or ""
    if partition and not _PARTITION.fullmatch(partition):
        raise TableError(
            f"bad partition spec {partition!r} in {uri!r}",
            hint="write it as key=value[,key=value], e.g. ds=20240101 or ds=20240101,hh=03",
        )
    return OdpsUri(project, table, partition)


def client_from_env(project: str):
    """An `odps.ODPS` entry from the environment's credentials."""
    missing = [name for name in CREDENTIAL_VARS if not os.environ.get(name)]
    if missing:
        raise TableError(
            f"ODPS credentials missing: {', '.join(missing)} not set",
            hint=f"export {', '.join(CREDENTIAL_VARS)} (and ODPS_PROJECT if needed)",
        )
    from odps import ODPS

    from vqf.storage.secret import add_secret

    for name in ("ODPS_ACCESS_ID", "ODPS_ACCESS_KEY"):  # masked wherever vqf redacts text
        add_secret(os.environ[name])
    return ODPS(
        os.environ["ODPS_ACCESS_ID"],
        os.environ["ODPS_ACCESS_KEY"],
        project=os.environ.get("ODPS_PROJECT") or project,
        endpoint=os.environ["ODPS_ENDPOINT"],
    )


def _tunnel(client, project: str):
    from odps.tunnel import TableTunnel

    return TableTunnel(client, project=project)


def _failed(what: str, uri: OdpsUri, error: Exception) -> TableError:
    return TableError(f"{what} {uri} failed: {type(error).__name__}: {error}")


def _get_table(client, uri: OdpsUri, *, hint: str):
    try:
        exists = client.exist_table(uri.table, project=uri.project)
        table = client.get_table(uri.table, project=uri.project) if exists else None
    except Exception as e:  # pyodps raises many network and server error types
        raise _failed("looking up", uri, e) from None
    if table is None:
        raise TableError(f"ODPS table {uri.project}.{uri.table} does not exist", hint=hint)
    partitions = [p.name for p in table.table_schema.partitions]
    if partitions and not uri.partition:
        raise TableError(
            f"ODPS table {uri.project}.{uri.table} is partitioned by {', '.join(partitions)}",
            hint=f"name a partition: {uri}/{','.join(f'{p}=...' for p in partitions)}",
        )
    if uri.partition and not partitions:
        raise TableError(
            f"ODPS table {uri.project}.{uri.table} has no partitions, but {uri} names one",
            hint=f"use odps://{uri.project}/{uri.table}",
        )
    return table


def _column_names(table) -> list[str]:
    return [c.name for c in table.table_schema.simple_columns]


def _partition_exists(table, uri: OdpsUri) -> bool:
    return not uri.partition or table.exist_partition(uri.partition)


class OdpsSource:
    """Rows of one ODPS table partition, read through a (shared) download session."""

    def __init__(self, uri: str, *, client=None, session_id: str | None = None):
        self.uri = uri
        self.location = parse_uri(uri)
        client = client if client is not None else client_from_env(self.location.project)
        self.table = _get_table(client, self.location, hint=URI_HINT)
        if not _partition_exists(self.table, self.location):
            raise TableError(f"partition {self.location} does not exist", hint=URI_HINT)
        self.columns = _column_names(self.table)
        try:
            self.session = _tunnel(client, self.location.project).create_download_session(
                self.table, partition_spec=self.location.partition or None, download_id=session_id
            )
        except Exception as e:
            raise _failed("opening a download session on", self.location, e) from None

    @property
    def session_id(self) -> str:
        """Pass this to the other ranks' `open_source(..., session_id=)`."""
        return self.session.id

    def count(self) -> int:
        return int(self.session.count)

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        count = min(count, self.count() - start)
        if count <= 0:
            return
        try:
            with self.session.open_record_reader(start, count) as reader:
                for record in reader:
                    yield {name: record[name] for name in self.columns}
        except TableError:
            raise
        except Exception as e:
            raise _failed(f"reading rows {start}..{start + count} of", self.location, e) from None


def output_ddl(uri: OdpsUri, columns: Sequence[str]) -> str:
    """The CREATE TABLE statement an output table needs (all columns are strings)."""
    cols = ", ".join(f"{name} STRING" for name in columns)
    keys = [kv.split("=", 1)[0] for kv in uri.partition.split(",")] if uri.partition else []
    parts = f" PARTITIONED BY ({', '.join(f'{k} STRING' for k in keys)})" if keys else ""
    return f"CREATE TABLE IF NOT EXISTS {uri.project}.{uri.table} ({cols}){parts};"


class OdpsSink:
    """One rank's writer into an ODPS table: rows committed window by window."""

    def __init__(
        self,
        uri: str,
        *,
        rank: int,
        world_size: int,
        client=None,
        columns: Sequence[str],
        block_rows: int = DEFAULT_BLOCK_ROWS,
        commit_every_rows: int = DEFAULT_BLOCK_ROWS,
        commit_every_s: float = 600.0,
        clock=time.monotonic,
    ):
        check_rank(rank=rank, world_size=world_size)
        for name, value in (
            ("block_rows", block_rows),
            ("commit_every_rows", commit_every_rows),
            ("commit_every_s", commit_every_s),
        ):
            if value <= 0:
                raise TableError(f"sinks.odps.{name} = {value} must be positive")
        if -(-commit_every_rows // block_rows) > BLOCK_ID_LIMIT:
            raise TableError(
                f"a window of {commit_every_rows} rows in blocks of {block_rows} needs more "
                f"than the tunnel's {BLOCK_ID_LIMIT} blocks",
                hint="raise sinks.odps.block_rows or lower sinks.odps.commit_every_rows",
            )
        self.uri = uri
        self.location = parse_uri(uri)
        self.rank = rank
        self.columns = tuple(columns)
        self.block_rows = block_rows
        self.commit_every_rows = commit_every_rows
        self.commit_every_s = commit_every_s
        self._clock = clock
        self.client = client if client is not None else client_from_env(self.location.project)
        self.table = _get_table(
            self.client, self.location, hint=f"create it: {output_ddl(self.location, self.columns)}"
        )
        missing = [c for c in self.columns if c not in _column_names(self.table)]
        if missing:
            raise TableError(
                f"ODPS table {self.location.project}.{self.location.table} lacks columns "
                f"{', '.join(missing)}",
                hint=f"an output table looks like: {output_ddl(self.location, self.columns)}",
            )
        self.windows_committed = 0
        self.rows_committed = 0
        self._session = None  # the open window's upload session
        self._block_ids: list[int] = []
        self._window_rows = 0  # rows of the open window, uploaded or buffered
        self._window_started = 0.0
        self._buffer: list[dict[str, str]] = []
        self._closed = False

    def done_rows(self) -> Done:
        """The rows the table (partition) holds: every window any rank committed."""
        done = Done()
        try:
            if not _partition_exists(self.table, self.location):
                return done
            session = _tunnel(self.client, self.location.project).create_download_session(
                self.table, partition_spec=self.location.partition or None
            )
            total = int(session.count)
            if total:
                columns = ["video_id", "result_info"]
                with session.open_record_reader(0, total, columns=columns) as reader:
                    for r in reader:
                        done.add(r["video_id"], r["result_info"])
        except Exception as e:
            raise _failed("reading finished rows of", self.location, e) from None
        return done

    def write(self, records: list[dict]) -> None:
        """Adds records to the open window (full blocks go up); commits each window that
        reaches commit_every_rows rows or commit_every_s seconds."""
        if self._closed:
            raise TableError(f"sink {self.uri!r} is closed")
        rows = [output_record(r, self.columns) for r in records]
        while rows:
            room = self.commit_every_rows - self._window_rows
            self._add(rows[:room])
            rows = rows[room:]
            if self._window_rows >= self.commit_every_rows:
                self._commit_window()
        self.tick()

    def tick(self) -> None:
        """Commits the open window when it is commit_every_s old (the writer calls this when
        no rows arrive, so a quiet rank's rows do not wait)."""
        if self._window_rows and self._clock() - self._window_started >= self.commit_every_s:
            self._commit_window()

    def close(self) -> None:
        """Commits the last window."""
        if self._closed:
            return
        if self._window_rows:
            self._commit_window()
        self._closed = True

    # -- one window --------------------------------------------------------------------------
    def _add(self, rows: list[dict[str, str]]) -> None:
        if not rows:
            return
        if self._window_rows == 0:
            self._window_started = self._clock()
        self._window_rows += len(rows)
        self._buffer.extend(rows)
        while len(self._buffer) >= self.block_rows:
            self._upload(self._buffer[: self.block_rows])
            del self._buffer[: self.block_rows]

    def _commit_window(self) -> None:
        if self._buffer:
            self._upload(self._buffer)
            self._buffer = []
        session, blocks = self._session, list(self._block_ids)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                session.commit(blocks)
                break
            except Exception as e:
                if _was_committed(session):  # the answer was lost, not the commit
                    break
                if attempt == COMMIT_ATTEMPTS:
                    raise _failed(
                        f"committing window {self.windows_committed} to", self.location, e
                    ) from None
                log.warning("commit to %s failed (%s); retrying", self.location, e)
        log.info(
            "rank %d committed %d rows in %d blocks to %s",
            self.rank,
            self._window_rows,
            len(blocks),
            self.location,
        )
        self.windows_committed += 1
        self.rows_committed += self._window_rows
        self._session, self._block_ids, self._window_rows = None, [], 0

    def _open_session(self):
        try:
            return _tunnel(self.client, self.location.project).create_upload_session(
                self.table,
                partition_spec=self.location.partition or None,
                create_partition=bool(self.location.partition),
            )
        except Exception as e:
            raise _failed("opening an upload session on", self.location, e) from None

    def _upload(self, rows: list[dict[str, str]]) -> None:
        if self._session is None:
            self._session = self._open_session()
        block_id = len(self._block_ids)
        for attempt in range(1, BLOCK_ATTEMPTS + 1):
            try:
                self._write_block(block_id, rows)
                break
            except Exception as e:  # the same block id again overwrites the partial block
                if attempt == BLOCK_ATTEMPTS:
                    raise _failed(f"uploading block {block_id} to", self.location, e) from None
                log.warning("block %d to %s failed (%s); retrying", block_id, self.location, e)
        self._block_ids.append(block_id)

    def _write_block(self, block_id: int, rows: list[dict[str, str]]) -> None:
        with self._session.open_record_writer(block_id) as writer:
            for row in rows:
                writer.write(self._record(row))

    def _record(self, row: dict[str, Any]):
        record = self._session.new_record()
        for name, value in row.items():
            record[name] = value
        return record


def _was_committed(session) -> bool:
    """Whether the server closed the session, i.e. a commit whose reply was lost went in."""
    try:
        session.reload()
        status = getattr(session.status, "value", session.status)
    except Exception:
        return False
    return str(status).upper() == "CLOSED"
