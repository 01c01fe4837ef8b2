"""Downloaded videos live in one folder under a byte budget and are deleted after use."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.storage.base import Located, too_large


class Cache:
    """A download folder and a byte budget shared by every fetch of one process.

    A fetch reserves its object's size before writing; when the budget is full it waits
    for released space (bounded by its timeout), so concurrent downloads never hold more
    than the budget on disk.
    """

    def __init__(self, *, directory: str, budget_bytes: int):
        self.budget_bytes = int(budget_bytes)
        self._directory = directory
        self._made: Path | None = None
        self._used = 0
        self._peak = 0
        self._waits = 0
        self._waiting = 0  # fetches blocked on the budget right now
        self._cond = threading.Condition()

    @property
    def directory(self) -> Path:
        with self._cond:
            if self._made is None:
                if self._directory:
                    self._made = Path(self._directory)
                    self._made.mkdir(parents=True, exist_ok=True)
                    remove_orphans(self._made)
                else:
                    # One private folder per process, removed when the cache goes away.
                    self._made = Path(tempfile.mkdtemp(prefix="vqf-cache-"))
                    weakref.finalize(self, shutil.rmtree, self._made, True)
            return self._made

    def usage(self) -> dict[str, float]:
        with self._cond:
            return {
                "used_bytes": self._used,
                "peak_bytes": self._peak,
                "budget_bytes": self.budget_bytes,
                "waits": self._waits,
                "waiting": self._waiting,
            }

    def reserve(self, nbytes: int, *, timeout_s: float, uri: str) -> int:
        """Takes `nbytes` of the budget, waiting up to `timeout_s` for released space."""
        if nbytes > self.budget_bytes:
            raise too_large(uri, nbytes, self.budget_bytes, what="storage.cache_budget_gb")
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._used + nbytes > self.budget_bytes:
                self._waits += 1
                self._waiting += 1
                try:
                    self._wait_for_space(nbytes, deadline=deadline, timeout_s=timeout_s, uri=uri)
                finally:
                    self._waiting -= 1
            self._used += nbytes
            self._peak = max(self._peak, self._used)
        return nbytes

    def _wait_for_space(self, nbytes: int, *, deadline: float, timeout_s: float, uri: str) -> None:
        """Waits on the condition (held by the caller) until `nbytes` fit in the budget."""
        while self._used + nbytes > self.budget_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VideoError(
                    ErrorType.TIMEOUT,
                    f"{uri}: waited {timeout_s:.1f}s for {nbytes / 2**20:.1f} MiB of cache space"
                    f" ({self._used / 2**20:.1f} of {self.budget_bytes / 2**20:.1f} MiB in use)",
                    stage=Stage.FETCH,
                    hint="raise storage.cache_budget_gb or lower decode.prefetch",
                )
            self._cond.wait(left)

    def give_back(self, nbytes: int) -> None:
        with self._cond:
            self._used -= nbytes
            self._cond.notify_all()

    def download(
        self,
        *,
        uri: str,
        reserve_bytes: int,
        timeout_s: float,
        suffix: str,
        write: Callable[[Path], int],
    ) -> Located:
        """Reserves space, lets `write(path)` fill a new file, and returns it as temporary.

        `write` returns the bytes written; the reservation shrinks to that. On failure the
        partial file is deleted and the space given back.
        """
        held = self.reserve(reserve_bytes, timeout_s=timeout_s, uri=uri)
        fd, name = tempfile.mkstemp(prefix=f"vqf-{os.getpid()}-", suffix=suffix, dir=self.directory)
        os.close(fd)
        path = Path(name)
        try:
            size = write(path)
        except BaseException:
            path.unlink(missing_ok=True)
            self.give_back(held)
            raise
        if size < held:
            self.give_back(held - size)
            held = size
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):  # a second release is a no-op
                path.unlink(missing_ok=True)
                self.give_back(held)

        return Located(path=path, size=size, temporary=True, release=release)


def node_share(budget_bytes: int, *, env=None) -> int:
    """This rank's part of a node's download budget: the ranks of a node share its disk, so
    each takes budget / LOCAL_WORLD_SIZE (set by torchrun and by `vqf run --gpus N`)."""
    env = os.environ if env is None else env
    text = env.get("LOCAL_WORLD_SIZE", "1")
    try:
        ranks = int(text)
    except ValueError:
        raise ConfigError(f"LOCAL_WORLD_SIZE = {text!r} is not a whole number") from None
    if ranks < 1:
        raise ConfigError(f"LOCAL_WORLD_SIZE = {ranks} must be at least 1")
    return int(budget_bytes) // ranks


def remove_orphans(directory: Path) -> list[Path]:
    """Deletes downloads whose process is gone (a rank killed with -9 cannot clean up after
    itself); files of live processes, other ranks sharing the folder, are left alone."""
    removed = []
    for path in directory.glob("vqf-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie, dead but not yet reaped by
    its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here: kill(0) is all there is
        return True


def suffix_of(key: str) -> str:
    """The file extension of a key (decoders look at it), limited to a sane length."""
    suffix = Path(key.split("?", 1)[0]).suffix
    return suffix if 1 < len(suffix) <= 8 and suffix[1:].isalnum() else ""
