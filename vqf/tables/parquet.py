"""Parquet tables. Sinks write one file per `write` call: `part-RRRRR-SSSSSS.parquet`.

Each file is written under a hidden temp name, fsynced, then renamed into place, so a reader
sees whole files only; a writer removes its rank's stray temp files when it opens.
pyarrow is imported here, on first use of a Parquet table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from vqf.errors import TableError
from vqf.tables.base import (
    FORMATS,
    Done,
    ShardDirectory,
    check_slice,
    fsync_dir,
    lock_rank,
    output_record,
    shard_rank,
    unlock,
)

_PART = re.compile(r"part-(\d{5})-(\d{6})\.parquet")


@FORMATS.register("parquet")
class ParquetFormat:
    suffix = ".parquet"

    @staticmethod
    def open_part(path: Path) -> ParquetTable:
        return ParquetTable(path)

    @staticmethod
    def open_sink(path: Path, *, rank: int, world_size: int, columns: Sequence[str]) -> ParquetSink:
        return ParquetSink(path, rank=rank, world_size=world_size, columns=columns)


def _open(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise TableError(
            f"cannot read Parquet table {str(path)!r}: {e}",
            hint="is it a complete Parquet file? a partial copy has no footer",
        ) from None


class ParquetTable:
    """One Parquet file read as a table, a row group at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = _open(self.path)  # reads the footer now: a bad file fails at open

    def count(self) -> int:
        return self._file.metadata.num_rows

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        end = start + count
        offset = 0
        for group in range(self._file.num_row_groups):
            rows = self._file.metadata.row_group(group).num_rows
            lo, hi = max(start, offset), min(end, offset + rows)
            if lo < hi:
                table = self._read_group(group).slice(lo - offset, hi - lo)
                yield from table.to_pylist()
            offset += rows
            if offset >= end:
                return

    def _read_group(self, group: int):
        import pyarrow as pa

        try:
            return self._file.read_row_group(group)
        except (OSError, pa.ArrowException) as e:
            raise TableError(f"cannot read {str(self.path)!r} row group {group}: {e}") from None


class ParquetSink(ShardDirectory):
    """Rank r writes `<dir>/part-{r:05d}-{seq:06d}.parquet`, one atomic file per write."""

    def __init__(self, directory: Path, *, rank: int, world_size: int, columns: Sequence[str]):
        import pyarrow as pa

        super().__init__(directory, rank=rank, world_size=world_size, columns=columns)
        self.schema = pa.schema([(name, pa.string()) for name in self.columns])
        self.removed_temps = _remove_temps(self.directory, rank=rank, world_size=world_size)
        self._seq = self._next_seq()

    def _next_seq(self) -> int:
        seqs = [
            int(m.group(2))
            for p in self.directory.iterdir()
            if (m := _PART.fullmatch(p.name)) and int(m.group(1)) == self.rank
        ]
        return max(seqs, default=-1) + 1

    def done_rows(self) -> Done:
        done = Done()
        for path in sorted(self.directory.glob("*.parquet")):
            if path.name.startswith("."):
                continue
            table = _open(path).read(columns=["video_id", "result_info"])
            for video_id, info in zip(*(c.to_pylist() for c in table.columns)):
                done.add(video_id, info)
        return done

    def write(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not records:
            return
        self.check_open()
        rows = [output_record(r, self.columns) for r in records]
        table = pa.Table.from_pylist(rows, schema=self.schema)
        if any("_embeddings" in r for r in records):
            from vqf.embeddings import parquet_columns

            for column, array in parquet_columns(records):
                table = table.append_column(column, array)
        name = f"part-{self.rank:05d}-{self._seq:06d}.parquet"
        temp = self.directory / f".{name}.tmp"
        with open(temp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.directory / name)
        fsync_dir(self.directory)
        self._seq += 1


def _remove_temps(directory: Path, *, rank: int, world_size: int) -> list[str]:
    """Removes temp files a killed writer left: this rank's, and (rank 0) orphan ranks'."""
    removed = []
    for path in sorted(directory.glob(".part-*.parquet.tmp")):
        owner = shard_rank(path.name)
        if owner == rank:
            path.unlink(missing_ok=True)
            removed.append(path.name)
        elif rank == 0 and owner is not None and owner >= world_size:
            lock = lock_rank(directory, rank=owner)
            if lock is not None:  # a locked rank is a live writer: its temp is in use
                path.unlink(missing_ok=True)
                removed.append(path.name)
                unlock(lock)
    if removed:
        fsync_dir(directory)
    return removed
