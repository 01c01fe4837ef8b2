"""Keeping a long-running rank's heap from growing with the work it has done.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
blocks of that size come from the heap instead of their own mappings. A rank allocates and
frees decoded chunks and clip buffers of a few MiB to tens of MiB for hours, from several
threads, so its heap fragments and RSS creeps up with video length even though the frames in
flight stay under the budget. A fixed threshold keeps such blocks in mappings of their own,
returned to the system the moment they are freed (measured with `vqf bench-engine memory`).

Smaller blocks still fragment the per-thread arenas: with the frame filters' many small
temporaries per chunk, a 10-minute VP9 video on the DALI CPU route grew RSS by about 2 MB a
second (1.17 to 1.34 GB). `trim_heap`, called by the decode lanes and at most every ten
seconds in the process, hands the arenas' free pages back (glibc's malloc_trim); the same run
then stays at 1.11-1.14 GB. Every two seconds held it as flat but cost time on the pyav route.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD_BYTES = 1 << 20
TRIM_EVERY_S = 10.0
_done = False
_trim_lock = threading.Lock()
_trim_state: dict = {"fn": None, "last": 0.0}  # fn: libc's malloc_trim, False off glibc


def fix_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Sets glibc's mmap threshold to `threshold` once per process; False off glibc."""
    global _done
    if _done:
        return True
    try:
        libc = _libc()
        ok = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except AttributeError:  # musl, macOS: no mallopt, nothing to do
        ok = False
    _done = ok
    if not ok:
        log.debug("mallopt is not available: the heap keeps the allocator's own thresholds")
    return ok


def trim_heap(*, every_s: float = TRIM_EVERY_S) -> bool:
    """Gives the heap's free pages back to the system, at most once every `every_s` seconds in
    the process (any thread may call it; the others return at once). True when it trimmed;
    False off glibc, or when it is not yet time."""
    now = time.monotonic()
    if now - _trim_state["last"] < every_s or not _trim_lock.acquire(blocking=False):
        return False
    try:
        if now - _trim_state["last"] < every_s:
            return False
        _trim_state["last"] = now
        fn = _trim_state["fn"]
        if fn is None:  # musl, macOS: nothing to trim this way
            fn = getattr(_libc(), "malloc_trim", False)
            _trim_state["fn"] = fn
        if fn is False:
            return False
        fn(0)
        return True
    finally:
        _trim_lock.release()


def _libc():
    """The C library, or None where it cannot be loaded by name."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
