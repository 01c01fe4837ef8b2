"""Local tables: a file, or a directory of shards read as one table in name order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from vqf.errors import TableError
from vqf.tables.base import FORMATS, SINK_HINT, URI_HINT, check_slice


def format_for(path: Path):
    """The registered format whose suffix `path` has, or None."""
    for _, fmt in FORMATS.items():
        if path.name.endswith(fmt.suffix):
            return fmt
    return None


class LocalSource:
    """Files concatenated in order into one table."""

    def __init__(self, uri: str, parts: list):
        self.uri = uri
        self.parts = parts
        self._counts: list[int] | None = None

    def count(self) -> int:
        if self._counts is None:
            self._counts = [part.count() for part in self.parts]
        return sum(self._counts)

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        self.count()
        end = start + count
        offset = 0
        for part, rows in zip(self.parts, self._counts, strict=True):
            lo, hi = max(start, offset), min(end, offset + rows)
            if lo < hi:
                yield from part.read(start=lo - offset, count=hi - lo)
            offset += rows
            if offset >= end:
                return


def _shards(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and format_for(p)
    )


def is_table(path: Path) -> bool:
    """A table file, or a folder whose top level holds table shards (else: maybe videos)."""
    if path.is_dir():
        return bool(_shards(path))
    return path.is_file() and format_for(path) is not None


def open_local_source(uri: str, path: Path) -> LocalSource:
    if not path.exists():
        raise TableError(f"table {uri!r} does not exist", hint=URI_HINT)
    if path.is_dir():
        files = _shards(path)
        if not files:
            raise TableError(
                f"directory {uri!r} holds no *.jsonl or *.parquet shards", hint=URI_HINT
            )
        return LocalSource(uri, [format_for(p).open_part(p) for p in files])
    fmt = format_for(path)
    if fmt is None:
        raise TableError(f"table {uri!r} has an unknown format", hint=URI_HINT)
    return LocalSource(uri, [fmt.open_part(path)])


def open_local_sink(uri: str, path: Path, *, rank: int, world_size: int, columns: Sequence[str]):
    """A sink into dataset directory `path`: Parquet shards if it is named *.parquet, else JSONL."""
    if path.exists() and not path.is_dir():
        raise TableError(f"output {uri!r} is a file, not a dataset directory", hint=SINK_HINT)
    fmt = format_for(path) or FORMATS.get("jsonl")
    try:
        return fmt.open_sink(path, rank=rank, world_size=world_size, columns=columns)
    except OSError as e:
        raise TableError(f"cannot write output {uri!r}: {e}", hint=SINK_HINT) from None
