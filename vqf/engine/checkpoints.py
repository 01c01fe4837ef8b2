"""Remote checkpoints: local rank 0 of each node downloads them once, the others wait."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from vqf.config import Recipe


def localize(recipe: Recipe, *, fetcher, local_leader: bool, group=None):
    """A resolver from checkpoint paths or URIs to local paths, after fetching remote ones."""
    root = Path(recipe.storage.cache_dir or tempfile.gettempdir()) / "vqf-checkpoints"

    def local(uri: str) -> Path:
        return root / hashlib.sha256(uri.encode()).hexdigest()[:16]

    remote = [m.path for m in recipe.models.values() if "://" in m.path and m.init != "random"]
    if local_leader:
        for uri in remote:
            if not (local(uri) / ".complete").exists():
                fetcher.fetch_uri(uri, dest=local(uri))
                (local(uri) / ".complete").touch()
    if group is not None:
        group.barrier()
    return lambda path: local(path) if "://" in path else Path(path)
