"""Remote checkpoints (oss://, http(s)://) as local paths, fetched once per node.

Every checkpoint the recipe's enabled filters need is covered: backbones and detectors
(`models.<name>.path`) and heads (`filters.<name>.head`). A URI may name a single file or a
folder, with or without a trailing '/': it is tried as written, then in the other form. Each
lands under `root/<hash>` (the hash of the URI without its trailing '/', so both spellings
share one copy), next to a `<hash>.complete` marker that records the local path; a download
cut short leaves no marker and is fetched again.

The node's leader (local rank 0) downloads; every rank then calls `wait()` once (the group's
barrier), and the others read the leader's markers. Wiring in the rank:

```
resolve = localize_checkpoints(recipe, fetcher=self.fetcher, root=root,
                               leader=local_rank == 0, wait=group.barrier if group else lambda: None)
bank = ModelBank.load(recipe=recipe, needs=model_needs(recipe), device=device, resolve=resolve)
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from vqf.config import Recipe
from vqf.errors import StorageError

log = logging.getLogger(__name__)


def remote_checkpoints(recipe: Recipe) -> list[str]:
    """The storage URIs of the checkpoints the enabled filters load, each once, in order."""
    from vqf.filters import model_needs

    models: list[str] = []
    heads: list[str] = []
    for need in model_needs(recipe):
        model = recipe.models.get(need.model)
        if model is None or model.init == "random":
            continue  # a random model (its head is random too)
        models.append(model.path)
        if need.head_kind and need.head_path != "random":
            heads.append(need.head_path)
    uris = [u for u in models + heads if "://" in u and not u.lower().startswith("file://")]
    return list(dict.fromkeys(uris))


def localize_checkpoints(
    recipe: Recipe, *, fetcher, root: Path, leader: bool, wait: Callable[[], None]
) -> Callable[[str], Path]:
    """Fetches the recipe's remote checkpoints on the node's leader and returns the resolver
    the model bank takes: a local path for a path or URI. Every rank calls `wait` once."""
    root = Path(root)
    uris = remote_checkpoints(recipe)
    if leader:
        for uri in uris:
            _fetch_once(uri, fetcher=fetcher, root=root)
    wait()
    local = {_canonical(uri): _recorded(uri, root=root) for uri in uris}

    def resolve(path: str) -> Path:
        if "://" not in path or path.lower().startswith("file://"):
            return Path(path.removeprefix("file://")).expanduser()
        key = _canonical(path)
        if key not in local:
            local[key] = _recorded(path, root=root)
        return local[key]

    return resolve


def _canonical(uri: str) -> str:
    return uri.rstrip("/")


def _name(uri: str) -> str:
    return hashlib.sha256(_canonical(uri).encode()).hexdigest()[:16]


def _marker(uri: str, root: Path) -> Path:
    return root / f"{_name(uri)}.complete"


def _recorded(uri: str, *, root: Path) -> Path:
    """The local path the leader's marker records for `uri`."""
    marker = _marker(uri, root)
    try:
        path = Path(json.loads(marker.read_text())["path"])
    except (OSError, ValueError, KeyError):
        raise StorageError(
            f"checkpoint {uri} was not fetched to {root} by this node's first rank",
            hint="check the first rank's log for the download error; every rank of a node "
            "must see the same storage.cache_dir",
        ) from None
    if not path.exists():
        raise StorageError(
            f"checkpoint {uri}: its local copy {path} is gone", hint=f"delete {marker}"
        )
    return path


def _fetch_once(uri: str, *, fetcher, root: Path) -> Path:
    """Downloads `uri` under root/<hash> unless a marker says it is there already."""
    try:
        return _recorded(uri, root=root)
    except StorageError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(uri)
    staging = root / f".{_name(uri)}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        got = _fetch_either_form(uri, fetcher=fetcher, dest=staging)
        if got == staging or staging in got.parents:
            shutil.rmtree(final, ignore_errors=True)  # a copy without its marker is incomplete
            os.replace(staging, final)
            got = final / got.relative_to(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    marker = _marker(uri, root)
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"uri": uri, "path": str(got)}))
    os.replace(tmp, marker)
    log.info("checkpoint %s fetched to %s", uri, got)
    return got


def _fetch_either_form(uri: str, *, fetcher, dest: Path) -> Path:
    """`uri` as written, then as the other of file and folder (with or without '/')."""
    other = uri.rstrip("/") if uri.endswith("/") else uri + "/"
    reasons = []
    for candidate in (uri, other):
        dest.mkdir(parents=True, exist_ok=True)  # a folder: a single file lands inside it
        try:
            return fetcher.fetch_uri(candidate, dest=dest)
        except StorageError as e:
            reasons.append(f"as {candidate}: {e.message}")
            shutil.rmtree(dest, ignore_errors=True)
    raise StorageError(
        f"checkpoint {uri} is neither a file nor a folder any tier has: " + "; ".join(reasons),
        hint="check models.<name>.path and filters.<name>.head in the recipe",
    )
