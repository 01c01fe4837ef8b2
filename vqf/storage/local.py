"""Tiers that are already files on this machine: CPFS, Alluxio FUSE, plain paths.

They never copy: a hit is the file itself, returned with temporary=False.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from vqf.errors import ErrorType, Stage, VideoError
from vqf.storage.base import (
    TIERS,
    Located,
    Miss,
    Target,
    Tier,
    as_target,
    check_bucket,
    check_relative,
    refused,
    resolve_under,
    too_large,
)


def stat_file(path: Path, *, uri: str, max_bytes: int | None) -> Located:
    """The file at `path` as a hit, or Miss when there is none; TOO_LARGE over `max_bytes`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise Miss(f"no file {path}") from None
    except OSError as e:
        raise VideoError(
            ErrorType.DOWNLOAD_FAILED, f"{uri}: cannot stat {path}: {e.strerror}", stage=Stage.FETCH
        ) from None
    if not path.is_file():
        raise Miss(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoError(
            ErrorType.DOWNLOAD_FAILED, f"{uri}: {path} is not readable", stage=Stage.FETCH
        )
    if max_bytes is not None and st.st_size > max_bytes:
        raise too_large(uri, st.st_size, max_bytes)
    return Located(path=path, size=st.st_size, temporary=False)


class MountTier(Tier):
    """`{root}/{bucket}/{key}` on a mounted file system."""

    root_field = ""

    @property
    def root(self) -> str:
        return getattr(self.config, self.root_field)

    def is_available(self) -> bool:
        return bool(self.root) and Path(self.root).is_dir()

    def unavailable_reason(self) -> str:
        if not self.root:
            return f"not configured (storage.{self.root_field} is empty)"
        return f"root {self.root} is not a mounted folder"

    def is_applicable(self, row_or_uri) -> bool:
        target = as_target(row_or_uri)
        return bool(target.bucket) and target.scheme in ("", "oss")

    def fetch(self, target: Target, *, cache, max_bytes: int | None) -> Located:
        check_bucket(target.bucket)
        path = resolve_under(Path(self.root), f"{target.bucket}/{target.key}", what="key")
        return stat_file(path, uri=target.uri, max_bytes=max_bytes)


@TIERS.register("cpfs")
class CpfsTier(MountTier):
    """CPFS, a parallel file system mounted at `storage.cpfs_root`."""

    name = "cpfs"
    root_field = "cpfs_root"


@TIERS.register("alluxio")
class AlluxioTier(MountTier):
    """Alluxio's FUSE mount at `storage.alluxio_root`; only for rows whose info asks for it."""

    name = "alluxio"
    root_field = "alluxio_root"

    def is_applicable(self, row_or_uri) -> bool:
        target = as_target(row_or_uri)
        return target.use_alluxio and super().is_applicable(target)


@TIERS.register("local")
class LocalTier(Tier):
    """Plain paths and file:// URIs; under `storage.local_root` when that is set."""

    name = "local"

    def is_available(self) -> bool:
        return not self.config.local_root or Path(self.config.local_root).is_dir()

    def unavailable_reason(self) -> str:
        return f"storage.local_root {self.config.local_root} is not a folder"

    def is_applicable(self, row_or_uri) -> bool:
        target = as_target(row_or_uri)
        return not target.bucket and target.scheme in ("", "file")

    def fetch(self, target: Target, *, cache, max_bytes: int | None) -> Located:
        return stat_file(self.path_of(target), uri=target.uri, max_bytes=max_bytes)

    def path_of(self, target: Target) -> Path:
        raw = target.key
        if target.scheme == "file":
            parts = urlsplit(raw)
            if parts.netloc not in ("", "localhost"):
                raise Miss(f"{raw} names another host")
            raw = url2pathname(parts.path)
        root = self.config.local_root
        if not root:
            check_relative(raw.lstrip("/") or ".", what="path")  # refuses '..' even without a root
            return Path(raw)
        if Path(raw).is_absolute():
            real_root = Path(os.path.realpath(root))
            real = Path(os.path.realpath(raw))
            if real_root not in real.parents:
                raise refused(
                    f"path {raw!r} lies outside storage.local_root {root!r}",
                    hint="give paths relative to storage.local_root",
                )
            return real
        return resolve_under(Path(root), raw, what="path")
