"""Input sources and output sinks, picked by URI.

Sources: a `*.jsonl` file, a `*.parquet` file, a directory of such shards (read as one table
in name order), or `odps://project/table[/partition]`; or videos as users have them (a file,
a folder, a glob, a .txt list, `oss://bucket/prefix/`: the input kinds of `vqf.tables.videos`),
each video a row of the seed's input schema. Sinks: a dataset directory (named
`*.parquet` for Parquet shards, anything else for JSONL shards) or an ODPS table; rank r
writes its own shard. pyarrow and pyodps are imported only when such a table is opened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from vqf.config import SinksConfig
from vqf.errors import TableError
from vqf.schema import OUTPUT_COLUMNS
from vqf.tables.base import FORMATS, SINK_HINT, URI_HINT, Sink, Source, check_rank, shard_range

# The file formats register themselves in FORMATS (pyarrow waits until a Parquet table opens).
from vqf.tables import jsonl as _jsonl  # noqa: F401, E402  isort: skip
from vqf.tables import parquet as _parquet  # noqa: F401, E402  isort: skip

__all__ = ["FORMATS", "Sink", "Source", "TableError", "open_sink", "open_source", "shard_range"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def _split(uri: str, *, hint: str) -> tuple[str, str]:
    """(scheme, rest); a plain path has scheme "file"."""
    if not isinstance(uri, str) or not uri.strip():
        raise TableError(f"table URI {uri!r} is empty", hint=hint)
    match = _SCHEME.match(uri)
    if not match:
        return "file", uri
    scheme = match.group(1).lower()
    if scheme not in ("file", "odps"):
        raise TableError(f"unknown table scheme {scheme!r} in {uri!r}", hint=hint)
    return scheme, uri if scheme == "odps" else uri[match.end() :]


def open_source(
    uri: str, *, odps_client=None, session_id: str | None = None, storage=None
) -> Source:
    """Opens an input table. `session_id` (ODPS only) joins a download session rank 0 made;
    `storage` (a StorageConfig) gives the credentials an `oss://` prefix is listed with."""
    from vqf.tables.videos import open_videos

    if isinstance(uri, str) and uri.startswith(("oss://", "http://", "https://")):
        return open_videos(uri, storage=storage)
    scheme, rest = _split(uri, hint=URI_HINT)
    if scheme == "odps":
        from vqf.tables.odps_table import OdpsSource

        return OdpsSource(uri, client=odps_client, session_id=session_id)
    from vqf.tables.local import is_table, open_local_source

    path = Path(rest)
    if not is_table(path):
        videos = open_videos(rest, storage=storage)
        if videos is not None:
            return videos
    return open_local_source(uri, path)


def open_sink(
    uri: str,
    *,
    rank: int,
    world_size: int,
    odps_client=None,
    columns: Sequence[str] = OUTPUT_COLUMNS,
    session_id: str | None = None,
    sinks: SinksConfig | None = None,
) -> Sink:
    """Opens rank's writer into an output table, with the recipe's `sinks` options.

    `session_id` is accepted for callers of the shared-session era and ignored: every rank
    opens its own ODPS upload session per commit window.
    """
    check_rank(rank=rank, world_size=world_size)
    scheme, rest = _split(uri, hint=SINK_HINT)
    if sinks is not None and sinks.embeddings.enable:
        from vqf.embeddings import with_embeddings

        if scheme != "file":
            return with_embeddings(None, path=None, rank=rank)  # refuses: not a local folder
        from vqf.tables.local import open_local_sink

        sink = open_local_sink(uri, Path(rest), rank=rank, world_size=world_size, columns=columns)
        return with_embeddings(sink, path=Path(rest), rank=rank)
    if scheme == "odps":
        from vqf.tables.odps_table import OdpsSink

        odps = (sinks or SinksConfig()).odps
        return OdpsSink(
            uri,
            rank=rank,
            world_size=world_size,
            client=odps_client,
            columns=columns,
            block_rows=odps.block_rows,
            commit_every_rows=odps.commit_every_rows,
            commit_every_s=odps.commit_every_s,
        )
    from vqf.tables.local import open_local_sink

    return open_local_sink(uri, Path(rest), rank=rank, world_size=world_size, columns=columns)
