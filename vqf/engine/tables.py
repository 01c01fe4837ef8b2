"""A rank's tables: its slice of the input, its output shard, and the rows still to do."""

from __future__ import annotations

from vqf.config import Recipe
from vqf.engine.work import WorkItem, select_work


def open_tables(recipe: Recipe, *, rank: int, world_size: int, stats, group=None):
    """(sink, work). With several ranks, the ODPS download session is made by rank 0 and
    joined by the others; each rank's sink commits its own windows."""
    from vqf.tables import open_sink, open_source, shard_range

    def opened(kind: str, open_fn):
        if group is None:
            return open_fn(None)
        holder = {}
        if rank == 0:
            holder["t"] = open_fn(None)
        sid = group.share(kind, lambda: getattr(holder["t"], "session_id", "") or "")
        return holder["t"] if rank == 0 else open_fn(sid or None)

    source = opened(
        "source", lambda sid: open_source(recipe.tables, session_id=sid, storage=recipe.storage)
    )
    total = source.count()
    if recipe.engine.max_rows:
        total = min(total, recipe.engine.max_rows)
    start, count = shard_range(total, rank=rank, world_size=world_size)
    # every rank commits its own output windows: no shared upload session
    sink = open_sink(recipe.outputs, rank=rank, world_size=world_size, sinks=recipe.sinks)
    work: list[WorkItem] = select_work(
        source.read(start=start, count=count), start=start, done=sink.done_rows()
    )
    stats.total = count
    stats.add("rows_skipped_done", count - len(work))
    return sink, work
