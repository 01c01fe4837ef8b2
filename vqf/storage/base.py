"""What every storage tier shares: the target it is asked for, its answer, and path safety."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from vqf.errors import ErrorType, Stage, VideoError
from vqf.registry import Registry

if TYPE_CHECKING:
    from vqf.config import StorageConfig
    from vqf.schema import InputRow
    from vqf.storage.cache import Cache

TIERS: Registry[type[Tier]] = Registry("storage tier")


@dataclass(frozen=True)
class Target:
    """What to fetch: an object key in a bucket, or a plain path / URL (bucket empty)."""

    uri: str
    bucket: str = ""
    key: str = ""
    use_alluxio: bool = False

    @property
    def scheme(self) -> str:
        head, sep, _ = self.uri.partition("://")
        return head.lower() if sep else ""

    @classmethod
    def from_row(cls, row: InputRow) -> Target:
        path = row.video_path
        if "://" in path:
            return cls.from_uri(path, use_alluxio=row.use_alluxio)
        if row.oss_bucket and not path.startswith("/"):
            return cls(row.uri, row.oss_bucket, path, row.use_alluxio)
        return cls(path, "", path, row.use_alluxio)

    @classmethod
    def from_uri(cls, uri: str, *, use_alluxio: bool = False) -> Target:
        if uri.lower().startswith("oss://"):
            bucket, _, key = uri[len("oss://") :].partition("/")
            return cls(uri, bucket, key, use_alluxio)
        return cls(uri, "", uri, use_alluxio)


def as_target(row_or_uri: InputRow | Target | str) -> Target:
    if isinstance(row_or_uri, Target):
        return row_or_uri
    if isinstance(row_or_uri, str):
        return Target.from_uri(row_or_uri)
    return Target.from_row(row_or_uri)


class Miss(Exception):
    """A tier does not have the object; `reason` goes into the all-tiers-missed message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Located:
    """A tier's hit: a local file, and how to give it back when the caller is done."""

    path: Path
    size: int
    temporary: bool
    release: Callable[[], None] | None = field(default=None, repr=False)


class Tier:
    """A storage backend. Subclasses register with `@TIERS.register(name)`."""

    name: ClassVar[str] = ""

    def __init__(self, config: StorageConfig, *, env: Mapping[str, str]):
        self.config = config
        self.env = env

    def is_available(self) -> bool:
        """Configured and reachable (a mount root exists, credentials are present)."""
        raise NotImplementedError

    def unavailable_reason(self) -> str:
        return "not configured"

    def is_applicable(self, row_or_uri: InputRow | Target | str) -> bool:
        """Whether this tier can hold the target at all (its kind of address)."""
        raise NotImplementedError

    def fetch(self, target: Target, *, cache: Cache, max_bytes: int | None) -> Located:
        """A local file with the target's bytes, or `Miss`; other failures are VideoError."""
        raise NotImplementedError

    def fetch_to(self, target: Target, *, dest: Path) -> Path:
        """Where the target's bytes lie for good: the path itself for local tiers."""
        return self.fetch(target, cache=None, max_bytes=None).path  # type: ignore[arg-type]


def refused(message: str, *, hint: str | None = None) -> VideoError:
    return VideoError(ErrorType.PATH_REFUSED, message, stage=Stage.FETCH, hint=hint)


def check_relative(key: str, *, what: str) -> PurePosixPath:
    """A key that may be joined under a root: relative, no `..`, not empty."""
    if not key:
        raise refused(f"{what} is empty", hint="give the path of a file under the root")
    if key.startswith(("/", "\\")):
        raise refused(
            f"{what} {key!r} is absolute where a key relative to a root is expected",
            hint="give the path relative to the configured root",
        )
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if ".." in parts:
        raise refused(f"{what} {key!r} has '..' components", hint="paths may not leave their root")
    return PurePosixPath(*parts)


def check_bucket(bucket: str) -> None:
    if not bucket or bucket in (".", "..") or "/" in bucket or "\\" in bucket:
        raise refused(f"bucket name {bucket!r} is not a plain name")


def resolve_under(root: Path, key: str, *, what: str = "path") -> Path:
    """`root/key` resolved (symlinks too); PATH_REFUSED when it lies outside `root`."""
    rel = check_relative(key, what=what)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / rel))
    if real != real_root and real_root not in real.parents:
        raise refused(
            f"{what} {key!r} resolves outside its root {str(root)!r}",
            hint="a symlink under the root points elsewhere",
        )
    return real


def too_large(uri: str, size: int, limit: int, *, what: str = "storage.max_video_mb") -> VideoError:
    return VideoError(
        ErrorType.TOO_LARGE,
        f"{uri} is {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.1f} MiB",
        stage=Stage.FETCH,
        hint=f"raise {what} if such videos should be judged",
    )
