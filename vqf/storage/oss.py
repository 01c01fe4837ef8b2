"""The OSS tier: oss2 with the project's own retries, size checks and ranged parallel download.

oss2 does not retry object requests, so every request here goes through `with_retries`
(5xx, connection errors, timeouts). Requests are signed with OSS's V4 scheme (`oss2.AuthV4`),
whose scope names the region: `storage.oss.region`, else OSS_REGION, else the region of an
Alibaba Cloud endpoint (oss-cn-hangzhou[-internal].aliyuncs.com -> cn-hangzhou). V1
(`oss2.Auth`) only when a recipe says `storage.oss.signature: v1`. oss2 is imported on first use.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from vqf.config import MB, StorageConfig
from vqf.errors import ErrorType, Stage, StorageError, VideoError
from vqf.storage.base import (
    TIERS,
    Located,
    Miss,
    Target,
    Tier,
    as_target,
    check_relative,
    too_large,
)
from vqf.storage.cache import suffix_of
from vqf.storage.retry import Stalled, is_timeout, with_retries
from vqf.storage.secret import add_secret, guard_logger, redact

CHUNK = 1 << 20
# oss-<region>[-internal].aliyuncs.com, optionally with the bucket in front (virtual host)
_ENDPOINT_REGION = re.compile(r"(?:^|\.)oss-([a-z]+-[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")


def region_of(endpoint: str) -> str:
    """The region id in an Alibaba Cloud OSS endpoint, or "" when it names none (an IP, a
    CNAME, the global acceleration endpoints)."""
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    match = _ENDPOINT_REGION.search(host.lower())
    if not match or match.group(1).startswith("accelerate"):
        return ""
    return match.group(1)


class _Cancelled(Exception):
    """Another part of the same download failed; this one stops without retrying."""


class _BadReply(Exception):
    """The server answered 2xx with the wrong range or length; worth another try."""


@functools.cache
def _crc_is_fast() -> bool:
    try:
        import crcmod._crcfunext  # noqa: F401  # the C extension; pure Python is too slow
    except ImportError:
        return False
    return True


@TIERS.register("oss")
class OssTier(Tier):
    """Objects in Alibaba Cloud OSS, fetched with oss2 into the cache."""

    name = "oss"

    def __init__(self, config: StorageConfig, *, env: Mapping[str, str]):
        super().__init__(config, env=env)
        oss = config.oss
        self.endpoint = oss.endpoint or env.get("OSS_ENDPOINT", "")
        self._key_id = oss.access_key_id or env.get("OSS_ACCESS_KEY_ID", "")
        self._key_secret = oss.access_key_secret or env.get("OSS_ACCESS_KEY_SECRET", "")
        self.signature = oss.signature
        self.region = oss.region or env.get("OSS_REGION", "") or region_of(self.endpoint)
        add_secret(self._key_id)
        add_secret(self._key_secret)
        self._buckets: dict[str, Any] = {}
        self._session: Any = None
        self._lock = threading.Lock()

    def is_available(self) -> bool:
        signable = self.signature == "v1" or bool(self.region)
        return bool(self.endpoint and self._key_id and self._key_secret and signable)

    def unavailable_reason(self) -> str:
        missing = [
            name
            for name, value in (
                ("endpoint (OSS_ENDPOINT)", self.endpoint),
                ("access key id (OSS_ACCESS_KEY_ID)", self._key_id),
                ("access key secret (OSS_ACCESS_KEY_SECRET)", self._key_secret),
            )
            if not value
        ]
        if self.signature == "v4" and not self.region:
            missing.append(
                f"region for V4 signatures (storage.oss.region or OSS_REGION; the endpoint "
                f"{self.endpoint!r} names none)"
            )
        return "not configured: no " + ", ".join(missing)

    def is_applicable(self, row_or_uri) -> bool:
        target = as_target(row_or_uri)
        return bool(target.bucket and target.key) and target.scheme in ("", "oss")

    # -- the tier's two entry points -------------------------------------------------------

    def fetch(self, target: Target, *, cache, max_bytes: int | None) -> Located:
        bucket = self._bucket(target.bucket)
        head = self._head(bucket, target)
        size = int(head.content_length or 0)
        if max_bytes is not None and size > max_bytes:
            raise too_large(target.uri, size, max_bytes)
        return cache.download(
            uri=target.uri,
            reserve_bytes=size,
            timeout_s=self.config.oss.timeout_s,
            suffix=suffix_of(target.key),
            write=lambda path: self._download(bucket, target, head, path),
        )

    def fetch_to(self, target: Target, *, dest: Path) -> Path:
        """One object to `dest` (a file, or into it when it is a folder), or a prefix ending
        in '/' to the folder `dest`, keeping the keys' relative paths."""
        bucket = self._bucket(target.bucket)
        if not target.key.endswith("/"):
            if dest.is_dir() or str(dest).endswith(os.sep):
                dest = dest / PurePosixPath(target.key).name
            self._download_to(bucket, target, dest)
            return dest
        keys = self._list(bucket, target)
        if not keys:
            raise Miss(f"no objects under oss://{target.bucket}/{target.key}")
        for key in keys:
            rel = check_relative(key[len(target.key) :], what="object key")
            self._download_to(bucket, Target.from_uri(f"oss://{target.bucket}/{key}"), dest / rel)
        return dest

    def upload(self, local: Path, uri: str) -> str:
        """Puts the file `local` at `uri` (oss://bucket/key) with the tier's retries and
        returns `uri`. The server's CRC64 is checked against the file's when crcmod is fast.

        A single PUT: OSS takes objects up to 5 GB that way, well above the videos' limit.
        """
        target = Target.from_uri(uri)
        if not (target.bucket and target.key) or target.key.endswith("/"):
            raise StorageError(
                f"cannot upload to {uri!r}", hint="give oss://bucket/key, the key not ending in /"
            )
        bucket = self._bucket(target.bucket)
        expected = _file_crc(local)

        def put():
            result = bucket.put_object_from_file(target.key, str(local))
            if expected is not None and result.crc is not None and result.crc != expected:
                raise _BadReply(f"OSS stored CRC64 {result.crc}, the file's is {expected}")

        self._retrying(put, target, action="upload")
        return f"oss://{target.bucket}/{target.key}"

    # -- oss2 calls ---------------------------------------------------------------------------

    def _bucket(self, name: str):
        with self._lock:
            if name not in self._buckets:
                import oss2

                guard_logger("oss2")
                oss = self.config.oss
                if self._session is None:
                    self._session = oss2.Session(pool_size=max(10, 2 * oss.parallel_parts))
                if self.signature == "v4":
                    auth = oss2.AuthV4(self._key_id, self._key_secret)
                else:
                    auth = oss2.Auth(self._key_id, self._key_secret)
                self._buckets[name] = oss2.Bucket(
                    auth,
                    self.endpoint,
                    name,
                    session=self._session,
                    region=self.region or None,  # V4's signing scope
                    # oss2 hands this to requests as its timeout: (connect, read) per request.
                    connect_timeout=(oss.connect_timeout_s, oss.timeout_s),
                    enable_crc=False,  # the whole object's CRC is checked here instead
                )
            return self._buckets[name]

    def _retrying(self, call, target: Target, *, action: str = "download"):
        oss = self.config.oss
        try:
            return with_retries(
                call,
                attempts=1 + oss.retries,
                backoff_s=oss.backoff_s,
                backoff_max_s=oss.backoff_max_s,
                retryable=_retryable,
            )
        except (Miss, VideoError, _Cancelled):
            raise
        except Exception as e:
            raise self._as_error(e, target, action=action) from None

    def _head(self, bucket, target: Target):
        return self._retrying(lambda: bucket.head_object(target.key), target)

    def _list(self, bucket, target: Target) -> list[str]:
        keys: list[str] = []
        marker = ""
        while True:
            page = self._retrying(
                lambda m=marker: bucket.list_objects(prefix=target.key, marker=m, max_keys=1000),
                target,
            )
            keys.extend(o.key for o in page.object_list if not o.key.endswith("/"))
            if not page.is_truncated:
                return keys
            marker = page.next_marker

    def _download_to(self, bucket, target: Target, dest: Path) -> None:
        head = self._head(bucket, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")
        try:
            self._download(bucket, target, head, part)
            os.replace(part, dest)  # a crash never leaves a complete-looking file
        finally:
            part.unlink(missing_ok=True)

    def _download(self, bucket, target: Target, head, path: Path) -> int:
        """Writes the object into `path` (preallocated), in ranged parts when it is large."""
        oss = self.config.oss
        size = int(head.content_length or 0)
        part = max(1, int(oss.part_size_mb * MB))
        if size >= oss.parallel_min_mb * MB and size > part:
            ranges = [(start, min(start + part, size) - 1) for start in range(0, size, part)]
        else:
            ranges = [(0, size - 1)] if size else []
        with open(path, "wb") as f:
            fd = f.fileno()
            if size:
                _preallocate(fd, size)
            crcs = self._get_parts(bucket, target, head, fd, ranges, ranged=len(ranges) > 1)
        expected = head.server_crc
        if expected is not None and crcs and None not in crcs:
            got = _combine_crcs(crcs, ranges)
            if got != expected:
                raise VideoError(
                    ErrorType.DOWNLOAD_FAILED,
                    f"{target.uri}: CRC64 {got} of the downloaded bytes differs from OSS's {expected}",
                    stage=Stage.FETCH,
                )
        return size

    def _get_parts(self, bucket, target, head, fd, ranges, *, ranged: bool) -> list[int | None]:
        if len(ranges) <= 1:
            return [
                self._retrying(lambda r=r: self._get(bucket, target, head, fd, r, ranged), target)
                for r in ranges
            ]
        stop = threading.Event()  # set when one part has failed for good: the rest give up

        def part(r):
            return self._retrying(
                lambda: self._get(bucket, target, head, fd, r, ranged, stop), target
            )

        workers = max(1, min(self.config.oss.parallel_parts, len(ranges)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vqf-oss")
        futures = [pool.submit(part, r) for r in ranges]
        try:
            # In order: the first failure met is a part's own, not a cancellation it caused.
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _get(self, bucket, target, head, fd, byte_range, ranged, stop=None) -> int | None:
        """One GET (ranged or whole) written at its offset; returns the bytes' CRC64 or None."""
        start, end = byte_range
        # oss2 strips the quotes off ETags; HTTP wants them back in If-Match.
        headers = {"If-Match": f'"{head.etag}"'} if head.etag else None
        deadline = time.monotonic() + self.config.oss.timeout_s
        if stop is not None and stop.is_set():
            raise _Cancelled()
        result = bucket.get_object(
            target.key, byte_range=(start, end) if ranged else None, headers=headers
        )
        try:
            if ranged and (result.status != 206 or not _range_is(result, start, end)):
                raise _BadReply(f"asked for bytes {start}-{end}, got {result.status}")
            crc = _new_crc()
            offset = start
            while chunk := result.read(CHUNK):
                if stop is not None and stop.is_set():
                    raise _Cancelled()
                if time.monotonic() > deadline:
                    raise Stalled(f"transfer ran past {self.config.oss.timeout_s}s")
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                if crc is not None:
                    crc.update(chunk)
            if offset != end + 1:
                raise _BadReply(f"got {offset - start} of {end + 1 - start} bytes")
            return crc.crc if crc is not None else None
        finally:
            result.close()

    def _as_error(self, e: Exception, target: Target, *, action: str = "download") -> Exception:
        """An oss2/requests failure as a Miss (absent) or a VideoError, secrets masked."""
        import oss2.exceptions as oe

        attempts = 1 + self.config.oss.retries
        if isinstance(e, oe.NotFound):
            return Miss(
                redact(f"{e.status} {e.code or 'NotFound'} oss://{target.bucket}/{target.key}")
            )
        if isinstance(e, oe.ServerError):
            detail = redact(f"{e.status} {e.code} {e.message}".strip())
            if e.status >= 500:
                message = f"{target.uri}: OSS answered {detail} after {attempts} attempts"
            else:
                message = f"{target.uri}: OSS refused: {detail}"
            hint = "check the credentials and the bucket's policy" if e.status == 403 else None
            return VideoError(ErrorType.DOWNLOAD_FAILED, message, stage=Stage.FETCH, hint=hint)
        cause = redact(_describe(e))
        if is_timeout(e):
            return VideoError(
                ErrorType.TIMEOUT,
                f"{target.uri}: timed out after {attempts} attempts ({cause})",
                stage=Stage.FETCH,
                hint="raise storage.oss.timeout_s or check the network to the endpoint",
            )
        return VideoError(
            ErrorType.DOWNLOAD_FAILED,
            f"{target.uri}: {action} failed after {attempts} attempts ({cause})",
            stage=Stage.FETCH,
            hint="check storage.oss.endpoint and the network",
        )


def _retryable(e: BaseException) -> bool:
    import oss2.exceptions as oe
    import requests

    if isinstance(e, (Miss, VideoError, _Cancelled, oe.NotFound)):
        return False
    if isinstance(e, oe.ServerError):
        return e.status >= 500
    return isinstance(e, (oe.RequestError, requests.RequestException, OSError, _BadReply))


def _describe(e: BaseException) -> str:
    inner = getattr(e, "exception", None)  # oss2.RequestError wraps the requests error
    e = inner if isinstance(inner, BaseException) else e
    return f"{type(e).__name__}: {e}"[:300]


def _range_is(result, start: int, end: int) -> bool:
    content_range = result.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {start}-{end}/")


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError):  # not every file system (or OS) can
        os.ftruncate(fd, size)


def _new_crc():
    if not _crc_is_fast():
        return None
    from oss2.utils import Crc64

    return Crc64()


def _file_crc(path: Path) -> int | None:
    crc = _new_crc()
    if crc is None:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc.update(chunk)
    return crc.crc


def _combine_crcs(crcs: list[int], ranges: list[tuple[int, int]]) -> int:
    from oss2.utils import Crc64

    combiner = Crc64()
    total = crcs[0]
    for crc, (start, end) in zip(crcs[1:], ranges[1:], strict=True):
        total = combiner.combine(total, crc, end - start + 1)
    return total
