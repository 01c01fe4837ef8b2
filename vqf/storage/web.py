"""The http(s) tier: urllib, bounded by a timeout, a maximum size and the cache budget."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from vqf.errors import ErrorType, Stage, VideoError
from vqf.storage.base import TIERS, Located, Miss, Target, Tier, as_target, too_large
from vqf.storage.cache import suffix_of
from vqf.storage.retry import Stalled, is_timeout, with_retries
from vqf.storage.secret import redact

CHUNK = 1 << 20
_MISSING = (404, 410)


class _TooBig(Exception):
    def __init__(self, size: int):
        self.size = size


@TIERS.register("http")
class HttpTier(Tier):
    """Videos behind http:// or https:// URLs (`storage.allow_http`)."""

    name = "http"

    def is_available(self) -> bool:
        return self.config.allow_http

    def unavailable_reason(self) -> str:
        return "disabled (storage.allow_http is false)"

    def is_applicable(self, row_or_uri) -> bool:
        return as_target(row_or_uri).scheme in ("http", "https")

    def fetch(self, target: Target, *, cache, max_bytes: int | None) -> Located:
        size = self._retrying(lambda: self._head(target.uri), target, max_bytes)
        if size is not None and max_bytes is not None and size > max_bytes:
            raise too_large(target.uri, size, max_bytes)
        # Unknown length: hold the most it may take, then shrink to what came.
        reserve = (
            size if size is not None else min(max_bytes or cache.budget_bytes, cache.budget_bytes)
        )
        return cache.download(
            uri=target.uri,
            reserve_bytes=reserve,
            timeout_s=self.config.http_timeout_s,
            suffix=suffix_of(urlsplit(target.uri).path),
            write=lambda path: self._retrying(
                lambda: self._get(target.uri, path, limit=reserve if size is None else size),
                target,
                max_bytes,
            ),
        )

    def fetch_to(self, target: Target, *, dest: Path) -> Path:
        if dest.is_dir():
            dest = dest / (PurePosixPath(urlsplit(target.uri).path).name or "download")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        try:
            self._retrying(lambda: self._get(target.uri, part, limit=None), target, None)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return dest

    def _retrying(self, call, target: Target, max_bytes: int | None):
        attempts = 1 + self.config.http_retries
        try:
            return with_retries(
                call,
                attempts=attempts,
                backoff_s=self.config.oss.backoff_s,
                backoff_max_s=self.config.oss.backoff_max_s,
                retryable=_retryable,
            )
        except urllib.error.HTTPError as e:
            if e.code in _MISSING:
                raise Miss(f"{e.code} {e.reason} {redact(target.uri)}") from None
            raise VideoError(
                ErrorType.DOWNLOAD_FAILED,
                redact(f"{target.uri}: HTTP {e.code} {e.reason} (after {attempts} attempts)"),
                stage=Stage.FETCH,
            ) from None
        except _TooBig as e:
            raise too_large(target.uri, e.size, max_bytes or e.size) from None
        except (Miss, VideoError):
            raise
        except Exception as e:
            kind = ErrorType.TIMEOUT if is_timeout(e) else ErrorType.DOWNLOAD_FAILED
            what = "timed out" if kind is ErrorType.TIMEOUT else "failed"
            raise VideoError(
                kind,
                redact(f"{target.uri}: {what} after {attempts} attempts ({type(e).__name__}: {e})"),
                stage=Stage.FETCH,
                hint="raise storage.http_timeout_s" if kind is ErrorType.TIMEOUT else None,
            ) from None

    def _head(self, url: str) -> int | None:
        """The Content-Length a HEAD reports, or None when the server does not say."""
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=self.config.http_timeout_s) as reply:
                length = reply.headers.get("Content-Length")
        except urllib.error.HTTPError as e:
            if e.code in (405, 501):  # HEAD not supported: the GET enforces the limit
                return None
            raise
        return int(length) if length and length.isdigit() else None

    def _get(self, url: str, path: Path, *, limit: int | None) -> int:
        """Streams the body into `path`; more than `limit` bytes raises _TooBig."""
        timeout = self.config.http_timeout_s
        deadline = time.monotonic() + timeout
        with urllib.request.urlopen(url, timeout=timeout) as reply, open(path, "wb") as out:
            size = 0
            while chunk := reply.read(CHUNK):
                size += len(chunk)
                if limit is not None and size > limit:
                    raise _TooBig(size)
                if time.monotonic() > deadline:
                    raise Stalled(f"transfer ran past {timeout}s")
                out.write(chunk)
        return size


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code == 429
    return isinstance(e, (urllib.error.URLError, http.client.HTTPException, OSError))
