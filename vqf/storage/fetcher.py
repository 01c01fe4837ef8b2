"""The composite fetcher: tries the tiers in order, first hit wins, every miss is reported."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqf.config import GB, MB, StorageConfig
from vqf.errors import ErrorType, Stage, StorageError, VideoError
from vqf.faults import fault_point
from vqf.schema import InputRow
from vqf.storage.base import TIERS, Located, Miss, Target, Tier, check_bucket, check_relative
from vqf.storage.cache import Cache, node_share
from vqf.storage.secret import redact

# Only these are read from the environment (and carried when the fetcher is pickled).
ENV_KEYS = ("OSS_ENDPOINT", "OSS_REGION", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")
STAT_KEYS = ("hits", "misses", "errors", "bytes", "seconds")


@dataclass
class FetchedVideo:
    """A fetched video as a local file. Use it as a context manager, or call `release()`."""

    path: Path
    uri: str
    tier: str
    size: int
    temporary: bool
    _release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Deletes a downloaded file and gives its bytes back to the cache budget."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> FetchedVideo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Fetcher:
    """Fetches videos and model files through the tiers of `storage.tiers`, thread-safe.

    A video's fetch runs within `storage.timeout_s`; one that passes it (a stuck mount, a
    server that stops sending) is a TIMEOUT failure and its thread is left behind, counted in
    `stuck()` until it returns (what it fetched then is released at once). The download
    budget is `storage.cache_budget_gb` divided among the ranks of the node.

    Pickling keeps only the config and the OSS variables of `env`; the other process gets
    its own tiers and its own cache budget.
    """

    def __init__(self, config: StorageConfig, *, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.config = config
        self._env = {k: env[k] for k in ENV_KEYS if k in env}
        self._build()

    def _build(self) -> None:
        self._cache = Cache(
            directory=self.config.cache_dir,
            budget_bytes=node_share(int(self.config.cache_budget_gb * GB)),
        )
        self._tiers: list[Tier] = [
            TIERS.get(name)(self.config, env=self._env) for name in self.config.tiers
        ]
        self._lock = threading.Lock()
        self._stats = {t.name: dict.fromkeys(STAT_KEYS, 0.0) for t in self._tiers}
        self._stuck = 0
        self._timeouts = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "env": self._env}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config, self._env = state["config"], state["env"]
        self._build()

    @property
    def tiers(self) -> list[str]:
        return [t.name for t in self._tiers]

    def fetch(self, row: InputRow) -> FetchedVideo:
        """The row's video as a local file within storage.timeout_s; raises VideoError
        (stage fetch) when it cannot."""
        limit = self.config.timeout_s
        box: dict[str, Any] = {}
        lock = threading.Lock()

        def work() -> None:
            try:
                got, err = self._fetch(row), None
            except BaseException as e:
                got, err = None, e
            with lock:
                if not box.get("abandoned"):
                    box["result"] = (got, err)
                    return
            if got is not None:  # the caller gave up on it: give the space back now
                got.release()
            with self._lock:
                self._stuck -= 1

        worker = threading.Thread(target=work, name="vqf-fetch", daemon=True)
        worker.start()
        worker.join(limit)
        with lock:
            result = box.get("result")
            box["abandoned"] = result is None
        if result is None:
            with self._lock:
                self._stuck += 1
                self._timeouts += 1
            raise VideoError(
                ErrorType.TIMEOUT,
                redact(f"fetch of {row.uri} ran past storage.timeout_s = {limit:g}s"),
                stage=Stage.FETCH,
                hint="raise storage.timeout_s, or check the mount or network it comes from",
            )
        got, err = result
        if err is not None:
            raise err
        return got

    def stuck(self) -> int:
        """Fetch threads given up on (past storage.timeout_s) that have not returned yet."""
        with self._lock:
            return self._stuck

    def timeouts(self) -> int:
        """Fetches that ran past storage.timeout_s so far."""
        with self._lock:
            return self._timeouts

    def _fetch(self, row: InputRow) -> FetchedVideo:
        fault_point("fetch", row.video_id)
        target = Target.from_row(row)
        max_bytes = int(self.config.max_video_mb * MB)
        tier, got = self._first_hit(
            target, lambda t: t.fetch(target, cache=self._cache, max_bytes=max_bytes)
        )
        return FetchedVideo(got.path, target.uri, tier, got.size, got.temporary, got.release)

    def fetch_uri(self, uri: str, *, dest: Path) -> Path:
        """A model file (or every object under an oss:// prefix ending in '/') as a local path.

        Downloads go to `dest` and stay; local tiers return the path itself. No size limit
        applies. Raises StorageError when no tier has it.
        """
        target = Target.from_uri(uri)
        try:
            _, path = self._first_hit(target, lambda t: t.fetch_to(target, dest=Path(dest)))
        except VideoError as e:
            raise StorageError(e.message, hint=e.hint) from e
        return path

    def stats(self) -> dict[str, dict[str, float]]:
        """Per tier: hits, misses, errors, bytes delivered, seconds spent."""
        with self._lock:
            return {name: dict(values) for name, values in self._stats.items()}

    def cache_usage(self) -> dict[str, float]:
        """Bytes held by downloads now and at most, the budget, and how often a fetch waited."""
        return self._cache.usage()

    def _first_hit(self, target: Target, attempt: Callable[[Tier], Any]) -> tuple[str, Any]:
        if target.bucket:
            check_bucket(target.bucket)
            check_relative(target.key, what="key")
        reasons = []
        for tier in self._tiers:
            if not tier.is_available():
                reasons.append(f"{tier.name}: {tier.unavailable_reason()}")
                continue
            if not tier.is_applicable(target):
                reasons.append(f"{tier.name}: not applicable")
                continue
            start = time.monotonic()
            try:
                got = attempt(tier)
            except Miss as miss:
                self._count(tier.name, "misses", start)
                reasons.append(f"{tier.name}: {miss.reason}")
                continue
            except VideoError:
                self._count(tier.name, "errors", start)
                raise
            except Exception as e:  # a tier's bug costs one video, not the run
                self._count(tier.name, "errors", start)
                raise VideoError(
                    ErrorType.INTERNAL,
                    redact(f"{target.uri}: tier {tier.name} failed: {type(e).__name__}: {e}"),
                    stage=Stage.FETCH,
                ) from None
            size = got.size if isinstance(got, Located) else 0
            self._count(tier.name, "hits", start, size)
            return tier.name, got
        raise VideoError(
            ErrorType.NOT_FOUND,
            redact(f"{target.uri} not found: " + "; ".join(reasons)),
            stage=Stage.FETCH,
            hint="check the path, the bucket and storage.* roots in the recipe",
        )

    def _count(self, tier: str, outcome: str, start: float, size: int = 0) -> None:
        with self._lock:
            stats = self._stats[tier]
            stats[outcome] += 1
            stats["bytes"] += size
            stats["seconds"] += time.monotonic() - start
