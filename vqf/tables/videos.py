"""Videos as users have them, read as an input table: a file, a folder, a glob, a list, a prefix.

Each kind of input is a class registered in `INPUTS`: `claims(uri)` says whether a URI is
its kind, `open(uri, storage=)` returns a Source whose records are rows of the seed's input
schema. A row's `video_id` is stable across reruns (the path relative to the folder or glob
root, the line as a list gives it, the object key for OSS), so resume finds what is done.
Rows come in a fixed order (sorted paths, the list's order, OSS's key order), so the shards
of several ranks are deterministic.

Entries that cannot be judged are not dropped silently: a broken symlink, a symlink leading
out of the folder, an unreadable file or sub-folder becomes a failure row naming the reason;
files without a video extension are skipped and counted in a warning; a folder, glob or list
with no video at all is a TableError.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from vqf.errors import TableError
from vqf.registry import Registry
from vqf.tables.base import URI_HINT as INPUT_HINT
from vqf.tables.base import check_slice

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .m2ts .mts .3gp .ogv .mxf .y4m "
    ".h264 .hevc .265 .264 .ivf".split()
)
LIST_SUFFIXES = (".txt", ".list", ".lst")


# Input kinds by name; a kind has `claims(uri) -> bool` and `open(uri, *, storage) -> Source`.
INPUTS: Registry[type] = Registry("input kind")


def is_video_name(name: str) -> bool:
    return PurePosixPath(name.split("?", 1)[0]).suffix.lower() in VIDEO_SUFFIXES


def video_row(video_id: str, path: str, *, bucket: str = "") -> dict[str, str]:
    """One input row of the seed's schema."""
    return {
        "video_id": video_id,
        "oss_bucket": bucket,
        "video_path": path,
        "video_tag": "",
        "info": "{}",
    }


def failed_row(video_id: str, path: str, reason: str) -> dict[str, str]:
    """A row the engine records as a failure (ROW_MALFORMED) with `reason`, never judges."""
    return {**video_row(video_id, path), "_malformed": reason}


class ListedSource:
    """Rows listed up front (local files: a list of paths fits in memory)."""

    def __init__(self, uri: str, rows: list[dict]):
        self.uri = uri
        self.rows = rows

    def count(self) -> int:
        return len(self.rows)

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        yield from (dict(r) for r in self.rows[start : start + count])


def _warn_skipped(uri: str, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning(
            "%s: skipped %d file(s) without a video extension: %s", uri, len(skipped), shown
        )


def _no_videos(uri: str, what: str, skipped: list[str]) -> TableError:
    seen = f"; it holds {len(skipped)} other file(s), e.g. {skipped[0]!r}" if skipped else ""
    return TableError(
        f"{what} {uri!r} holds no video files{seen}",
        hint=f"video extensions: {' '.join(sorted(VIDEO_SUFFIXES))}; {INPUT_HINT}",
    )


def _entry(path: Path, *, video_id: str, root: Path | None) -> dict[str, str]:
    """The row of one file found on disk: a video row, or a failure row saying why not."""
    shown = str(path)
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():
            return failed_row(video_id, shown, f"broken symlink: {path} -> {os.readlink(path)}")
        if root is not None and not target.is_relative_to(root):
            return failed_row(
                video_id, shown, f"symlink {path} leads outside {root} (to {target}); not followed"
            )
    if not os.access(path, os.R_OK):
        return failed_row(video_id, shown, f"cannot read {path}: permission denied")
    return video_row(video_id, str(path.absolute()))


def _rows_under(root: Path, files: list[Path], uri: str, what: str) -> list[dict]:
    """Rows of `files` (video ids relative to `root`), sorted; others skipped with a warning."""
    real_root = Path(os.path.realpath(root))
    rows, skipped = [], []
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if not is_video_name(path.name):
            skipped.append(rel)
            continue
        rows.append(_entry(path, video_id=rel, root=real_root))
    if not rows:
        raise _no_videos(uri, what, skipped)
    _warn_skipped(uri, skipped)
    return rows


@INPUTS.register("file")
class VideoFile:
    """One video file: one row, its video_id the file name."""

    @staticmethod
    def claims(uri: str) -> bool:
        path = Path(uri)
        return "://" not in uri and path.is_file() and is_video_name(path.name)

    @staticmethod
    def open(uri: str, *, storage=None) -> ListedSource:
        path = Path(uri)
        return ListedSource(uri, [_entry(path, video_id=path.name, root=None)])


@INPUTS.register("folder")
class VideoFolder:
    """Every video under a folder, recursively, sorted by relative path.

    Symlinked files inside the folder are read; a symlink leading out of it becomes a failure
    row; symlinked folders are not descended (no loops, no files counted twice).
    """

    @staticmethod
    def claims(uri: str) -> bool:
        return "://" not in uri and Path(uri).is_dir()

    @staticmethod
    def open(uri: str, *, storage=None) -> ListedSource:
        root = Path(uri)
        files: list[Path] = []
        unreadable: list[dict] = []

        def refused(e: OSError) -> None:
            rel = Path(e.filename).relative_to(root).as_posix() if e.filename else uri
            unreadable.append(failed_row(rel, str(e.filename), f"cannot list folder: {e}"))

        for folder, dirs, names in os.walk(root, onerror=refused, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in dirs:
                if os.path.islink(os.path.join(folder, d)):
                    log.info("%s: symlinked folder %s/%s is not descended", uri, folder, d)
            files += [Path(folder, n) for n in names if not n.startswith(".")]
        if not files and not unreadable:
            raise TableError(
                f"folder {uri!r} is empty: no *.jsonl or *.parquet shards and no videos",
                hint=INPUT_HINT,
            )
        if not files:
            return ListedSource(uri, unreadable)
        try:
            rows = _rows_under(root, files, uri, "folder")
        except TableError:
            if not unreadable:
                raise
            rows = []
        return ListedSource(uri, sorted(rows + unreadable, key=lambda r: r["video_id"]))


def _glob_root(pattern: str) -> Path:
    """The folder part of `pattern` before its first wildcard: what video ids are relative to."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


@INPUTS.register("glob")
class VideoGlob:
    """Files matching a glob (`**` crosses folders), sorted; ids relative to its fixed part."""

    @staticmethod
    def claims(uri: str) -> bool:
        return "://" not in uri and glob.has_magic(uri) and not Path(uri).exists()

    @staticmethod
    def open(uri: str, *, storage=None) -> ListedSource:
        root = _glob_root(uri)
        files = [Path(p) for p in glob.glob(uri, recursive=True) if os.path.isfile(p)]
        if not files:
            raise TableError(f"glob {uri!r} matches no files", hint=INPUT_HINT)
        return ListedSource(uri, _rows_under(root, files, uri, "glob"))


def _line_row(entry: str, *, base: Path) -> dict[str, str]:
    if entry.startswith("oss://"):
        bucket, _, key = entry[len("oss://") :].partition("/")
        return video_row(key, key, bucket=bucket)
    if "://" in entry:
        return video_row(entry, entry)
    path = Path(entry)
    return video_row(entry, str(path if path.is_absolute() else (base / path).absolute()))


@INPUTS.register("list")
class VideoList:
    """A text file, one path or URL a line (`#` comments and blank lines skipped), in order.

    A line's video_id is the line itself (an OSS URL's id is its key); relative paths are read
    against the list's own folder. A missing file gets its row's not_found failure.
    """

    @staticmethod
    def claims(uri: str) -> bool:
        return "://" not in uri and uri.endswith(LIST_SUFFIXES) and Path(uri).is_file()

    @staticmethod
    def open(uri: str, *, storage=None) -> ListedSource:
        path = Path(uri)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"cannot read list {uri!r}: {e}", hint=INPUT_HINT) from None
        entries = [s.strip() for s in lines]
        rows = [_line_row(s, base=path.parent) for s in entries if s and not s.startswith("#")]
        if not rows:
            raise TableError(f"list {uri!r} names no videos", hint="one path or URL a line")
        return ListedSource(uri, rows)


@INPUTS.register("url")
class VideoUrl:
    """One http(s) URL of a video: one row, its video_id the URL."""

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.startswith(("http://", "https://"))

    @staticmethod
    def open(uri: str, *, storage=None) -> ListedSource:
        return ListedSource(uri, [video_row(uri, uri)])


@INPUTS.register("oss")
class OssPrefix:
    """Every video under `oss://bucket/prefix` in OSS's key order, listed page by page.

    The listing is streamed with oss2's ObjectIterator each time it is needed (a count, then
    the rank's slice), so millions of keys never sit in memory. `oss://bucket/key.mp4` is one
    video. The id of a row is its object key. The prefix is a plain key prefix: end it with
    '/' to stay inside one "folder".
    """

    page_size = 1000  # OSS's largest page

    @staticmethod
    def claims(uri: str) -> bool:
        return uri.startswith("oss://")

    @staticmethod
    def open(uri: str, *, storage=None) -> OssPrefixSource:
        return OssPrefixSource(uri, storage=storage)


class OssPrefixSource:
    def __init__(self, uri: str, *, storage=None):
        from vqf.config import StorageConfig
        from vqf.storage.oss import OssTier

        self.uri = uri
        self.bucket_name, _, self.prefix = uri[len("oss://") :].partition("/")
        if not self.bucket_name:
            raise TableError(f"{uri!r} names no bucket", hint="oss://bucket/prefix/")
        self._tier = OssTier(storage or StorageConfig(), env=os.environ)
        if not self._tier.is_available():
            raise TableError(
                f"cannot list {uri!r}: OSS is {self._tier.unavailable_reason()}",
                hint="set storage.oss in the recipe or OSS_ENDPOINT, OSS_ACCESS_KEY_ID, "
                "OSS_ACCESS_KEY_SECRET (and OSS_REGION) in the environment",
            )
        self._count: int | None = None
        self.skipped = 0

    def _keys(self) -> Iterator[str]:
        """Video keys under the prefix, in key order, fetched a page at a time."""
        if is_video_name(self.prefix) and not self.prefix.endswith("/"):
            yield self.prefix  # one object: its fetch tells whether it exists
            return
        import oss2

        skipped = 0
        try:
            bucket = self._tier._bucket(self.bucket_name)
            listing = oss2.ObjectIterator(
                bucket, prefix=self.prefix, max_keys=OssPrefix.page_size, max_retries=3
            )
            for obj in listing:
                if obj.key.endswith("/"):
                    continue
                if is_video_name(obj.key):
                    yield obj.key
                else:
                    skipped += 1
        except oss2.exceptions.OssError as e:
            raise TableError(
                f"cannot list {self.uri!r}: {getattr(e, 'code', '') or type(e).__name__} "
                f"{getattr(e, 'message', '') or getattr(e, 'details', '')}".rstrip(),
                hint="check the bucket, the prefix and the credentials' list permission",
            ) from None
        self.skipped = skipped

    def count(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._keys())
            if self._count == 0:
                raise TableError(
                    f"no video objects under {self.uri!r}"
                    + (f" ({self.skipped} other objects)" if self.skipped else ""),
                    hint=f"video extensions: {' '.join(sorted(VIDEO_SUFFIXES))}",
                )
            if self.skipped:
                log.warning(
                    "%s: skipped %d object(s) without a video extension", self.uri, self.skipped
                )
        return self._count

    def read(self, *, start: int, count: int) -> Iterator[dict]:
        check_slice(start=start, count=count)
        for key in itertools.islice(self._keys(), start, start + count):
            yield video_row(key, key, bucket=self.bucket_name)


def open_videos(uri: str, *, storage=None):
    """The Source of the input kind that claims `uri`, or None when none does."""
    for _, kind in INPUTS.items():
        if kind.claims(uri):
            return kind.open(uri, storage=storage)
    return None


def describe_inputs() -> list[dict]:
    """Each input kind and its first docstring line, for `vqf list inputs`."""
    return [
        {"name": name, "doc": (kind.__doc__ or "").strip().splitlines()[0]}
        for name, kind in INPUTS.items()
    ]
