"""JSONL tables: one JSON object per line. Sinks append to `part-RRRRR.jsonl` per rank.

A line that is not a JSON object never stops a read: the source yields a `_malformed` record
for it, so the engine writes a failure row. Blank lines are not rows. A shard torn by a kill
mid-write is cut back to its last complete line when its writer opens it again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vqf.errors import TableError
from vqf.tables.base import (
    FORMATS,
    Done,
    ShardDirectory,
    check_slice,
    fsync_dir,
    lock_rank,
    malformed,
    output_record,
    shard_rank,
    unlock,
)

_TAIL_CHUNK = 1 << 16


@FORMATS.register("jsonl")
class JsonlFormat:
    suffix = ".jsonl"

    @staticmethod
    def open_part(path: Path) -> JsonlFile:
        return JsonlFile(path)

    @staticmethod
    def open_sink(path: Path, *, rank: int, world_size: int, columns: Sequence[str]) -> JsonlSink:
        return JsonlSink(path, rank=rank, world_size=world_size, columns=columns)


def parse_line(line: bytes) -> dict[str, Any] | str:
    """The object on one line, or the reason it is not one."""
    try:
        value = json.loads(line)
    except UnicodeDecodeError as e:
        return f"line is not UTF-8 ({e.reason} at byte {e.start})"
    except json.JSONDecodeError as e:
        return f"line is not valid JSON ({e.msg} at char {e.pos})"
    if not isinstance(value, dict):
        return f"line is a JSON {type(value).__name__}, not an object"
    return value


class JsonlFile:
    """One JSONL file read as a table; rows are its non-blank lines."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._count: int | None = None

    def count(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._rows())
        return self._count

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        end = start + count
        for index, (number, line) in enumerate(self._rows()):
            if index >= end:
                return
            if index >= start:
                value = parse_line(line)
                if isinstance(value, str):
                    yield malformed(value, line=number, path=str(self.path))
                else:
                    yield value

    def _rows(self) -> Iterator[tuple[int, bytes]]:
        """(1-based line number, bytes) of every non-blank line."""
        try:
            with open(self.path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        yield number, line
        except OSError as e:
            raise TableError(f"cannot read table {str(self.path)!r}: {e.strerror}") from None


def repair(path: Path) -> int:
    """Cuts a torn tail (an unterminated or unparsable last line) off a shard; bytes removed."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        cut = _line_start(f, size)  # drops a fragment with no newline after it
        while cut > 0:
            prev = _line_start(f, cut - 1)
            f.seek(prev)
            line = f.read(cut - prev)
            if not line.strip() or not isinstance(parse_line(line), str):
                break
            cut = prev
        if cut < size:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return size - cut


def _line_start(f, end: int) -> int:
    """Offset just past the last newline before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def count_done(path: Path, done: Done) -> None:
    """Adds a shard's valid lines to `done` (torn lines are not rows)."""
    with open(path, "rb") as f:
        for line in f:
            value = parse_line(line) if line.strip() else None
            if isinstance(value, dict):
                done.add(value.get("video_id"), value.get("result_info"))


class JsonlSink(ShardDirectory):
    """Rank r appends to `<dir>/part-{r:05d}.jsonl`; every write is flushed and fsynced."""

    def __init__(self, directory: Path, *, rank: int, world_size: int, columns: Sequence[str]):
        super().__init__(directory, rank=rank, world_size=world_size, columns=columns)
        self.path = self.directory / f"part-{rank:05d}.jsonl"
        self.repaired_bytes = repair(self.path) if self.path.exists() else 0
        if rank == 0:
            _repair_orphans(self.directory, world_size=world_size)
        created = not self.path.exists()
        self._file = open(self.path, "ab")
        if created:
            fsync_dir(self.directory)

    def done_rows(self) -> Done:
        done = Done()
        for path in sorted(self.directory.glob("*.jsonl")):
            if not path.name.startswith("."):
                count_done(path, done)
        return done

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self.check_open()
        data = "".join(
            json.dumps(output_record(r, self.columns), ensure_ascii=False) + "\n" for r in records
        )
        self._file.write(data.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _repair_orphans(directory: Path, *, world_size: int) -> None:
    """Repairs shards of ranks this run does not have (an earlier run had more ranks)."""
    for path in sorted(directory.glob("part-*.jsonl")):
        rank = shard_rank(path.name)
        if rank is None or rank < world_size:
            continue
        lock = lock_rank(directory, rank=rank)
        if lock is not None:  # a locked shard belongs to a live writer: leave it alone
            try:
                repair(path)
            finally:
                unlock(lock)
