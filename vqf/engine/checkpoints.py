"""Remote checkpoints for a rank: local rank 0 of each node fetches them once, the others wait."""

from __future__ import annotations

import tempfile
from pathlib import Path

from vqf.config import Recipe


def localize(recipe: Recipe, *, fetcher, local_leader: bool, group=None):
    """A resolver from checkpoint paths or URIs (models and heads) to local paths."""
    from vqf.models.remote import localize_checkpoints

    root = Path(recipe.storage.cache_dir or tempfile.gettempdir()) / "vqf-checkpoints"
    wait = group.barrier if group is not None else (lambda: None)
    return localize_checkpoints(recipe, fetcher=fetcher, root=root, leader=local_leader, wait=wait)
