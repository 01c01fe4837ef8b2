"""What every table format shares: the Source and Sink protocols, sharding, record coercion."""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from vqf.errors import ConfigError, TableError
from vqf.registry import Registry

URI_HINT = (
    "expected *.jsonl, *.parquet, a directory of shards, odps://project/table[/partition], or "
    "videos: a file, a folder, a glob ('videos/**/*.mp4'), a .txt list of paths or URLs (one a "
    "line), oss://bucket/prefix/"
)
SINK_HINT = (
    "expected a dataset directory (name it *.parquet for Parquet shards, anything else for "
    "JSONL shards) or odps://project/table[/partition]"
)


@runtime_checkable
class Source(Protocol):
    """A table of input records, read by contiguous slices."""

    uri: str

    def count(self) -> int:
        """Rows in the table."""
        ...

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        """Raw records of rows [start, start + count), in table order."""
        ...


@runtime_checkable
class Sink(Protocol):
    """One rank's writer into an output dataset."""

    uri: str

    def done_rows(self) -> Done:
        """The input rows the output already holds (every shard, any rank)."""
        ...

    def write(self, records: list[dict]) -> None:
        """Appends records; durable when it returns (ODPS: once their window is committed)."""
        ...

    def close(self) -> None:
        """Flushes; ODPS commits the rank's last window."""
        ...


@dataclass
class Done:
    """What an output already holds. A row's identity is its position in the input table,
    written as `result_info.row`; rows written without it are counted by video_id."""

    rows: set[int] = field(default_factory=set)
    by_video_id: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, video_id: object, result_info: object) -> None:
        """Counts one output row from its video_id and result_info (JSON text or object)."""
        info = result_info
        if isinstance(info, (str, bytes)):
            try:
                info = json.loads(info) if info else {}
            except ValueError:
                info = {}
        row = info.get("row") if isinstance(info, dict) else None
        if isinstance(row, int) and not isinstance(row, bool):
            self.rows.add(row)
        elif video_id is not None:
            self.by_video_id[str(video_id)] += 1

    def __len__(self) -> int:
        return len(self.rows) + sum(self.by_video_id.values())


# File formats by name; a format class has `suffix`, `open_part(path)` and
# `open_sink(path, rank=, world_size=, columns=)`.
FORMATS: Registry[type] = Registry("table format")


def shard_range(total: int, *, rank: int, world_size: int) -> tuple[int, int]:
    """(start, count) of rank's contiguous slice: rows [floor(r*N/W), floor((r+1)*N/W))."""
    check_rank(rank=rank, world_size=world_size)
    if total < 0:
        raise ConfigError(f"table size {total} is negative")
    start = rank * total // world_size
    end = (rank + 1) * total // world_size
    return start, end - start


def check_rank(*, rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ConfigError(f"world_size = {world_size} must be at least 1")
    if not 0 <= rank < world_size:
        raise ConfigError(
            f"rank = {rank} is outside the world", hint=f"allowed ranks: 0..{world_size - 1}"
        )


def check_slice(*, start: int, count: int) -> None:
    if start < 0 or count < 0:
        raise ConfigError(f"slice start={start} count={count} must not be negative")


def output_record(record: dict[str, Any], columns: Sequence[str]) -> dict[str, str]:
    """`record` restricted to `columns`, every value a string (objects become JSON text)."""
    return {name: as_text(record.get(name)) for name in columns}


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def malformed(reason: str, *, line: int, path: str) -> dict[str, Any]:
    """The record a source yields for a line it cannot parse, so the engine reports it."""
    return {"_malformed": reason, "_line": line, "_source": path}


def lock_rank(directory: Path, *, rank: int) -> int | None:
    """Takes rank's writer lock in `directory`; the fd, or None when another process holds it.

    Two writers of one shard would interleave lines; the lock file is hidden from readers.
    """
    fd = os.open(directory / f".rank-{rank:05d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class ShardDirectory:
    """A local sink's folder as one rank writes it: the rank checked, the folder made, the
    rank's writer lock held until `close` (a second writer of a shard is refused). Subclasses
    write the shards and count what is done."""

    def __init__(self, directory: Path, *, rank: int, world_size: int, columns: Sequence[str]):
        check_rank(rank=rank, world_size=world_size)
        self.directory = Path(directory)
        self.uri = str(directory)
        self.rank = rank
        self.columns = tuple(columns)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = lock_rank(self.directory, rank=rank)
        if self._lock is None:
            raise TableError(
                f"another process is writing shard {rank} of {self.uri!r}",
                hint="each rank of a run needs its own rank number; stop the other run first",
            )
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise TableError(f"sink {self.uri!r} is closed")

    def close(self) -> None:
        self.closed = True
        unlock(self._lock)
        self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def fsync_dir(directory: Path) -> None:
    """Makes a created, renamed or removed directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_rank(name: str) -> int | None:
    """The rank in a shard name `part-RRRRR...`, or None for other files."""
    match = re.match(r"\.?part-(\d{5})", name)
    return int(match.group(1)) if match else None
