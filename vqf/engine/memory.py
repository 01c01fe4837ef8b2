"""Keeping a long-running rank's heap from growing with the work it has done, cheaply.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
blocks of that size come from the heap instead of their own mappings. A rank allocates and
frees decoded chunks, clip batches and model temporaries of a few MiB to tens of MiB for
hours, from several threads, so with glibc's defaults its heap fragments and RSS swings with
the work: a 10-minute H.264 video went from 1.5 to 3.8 GB and back between trims.

The rank fixes the thresholds instead (`fix_heap_thresholds`): blocks of `MMAP_BYTES` (4 MiB)
and more get mappings of their own, returned the moment they are freed; smaller ones come
from the arenas, which keep up to `TRIM_BYTES` (64 MiB) free at their top rather than
handing it back on every free. A lower mmap threshold holds RSS as flat but pays for it in
page faults: at 1 MiB, every torch temporary over 1 MiB was a fresh mapping faulted in page
by page, and system time was a third of the CPU time of a long H.264 video (17.8 million
faults in 10 minutes). Measured on a 10-minute 640x360 video with the demo's filters at
256x256 clips (one run each, VmRSS sampled every 3 s):

| thresholds (mmap / trim) | H.264: processing, RSS | VP9 (DALI): processing, RSS |
|---|---|---|
| 1 MiB / 128 KiB | 30.6 s, 1.15-1.35 GB | 60.7 s, 1.09-1.19 GB |
| 4 MiB / 64 MiB (these) | 24.4 s, 1.24-1.50 GB | 55.3 s, 1.13-1.26 GB |
| 16 MiB / 128 MiB | 20.7 s, up to 1.85 GB | |

Freed pages inside the arenas still fragment them: `trim_heap`, called by the decode lanes
and at most every ten seconds in the process, hands them back (glibc's malloc_trim); without
it a 10-minute VP9 video on the DALI CPU route grew by about 2 MB a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_BYTES = 4 << 20
TRIM_BYTES = 64 << 20
TRIM_EVERY_S = 10.0
_done = False
_trim_lock = threading.Lock()
_trim_state: dict = {"fn": None, "last": 0.0}  # fn: libc's malloc_trim, False off glibc


def fix_heap_thresholds(*, mmap_bytes: int = MMAP_BYTES, trim_bytes: int = TRIM_BYTES) -> bool:
    """Sets glibc's mmap and trim thresholds once per process; False off glibc."""
    global _done
    if _done:
        return True
    try:
        libc = _libc()
        ok = bool(
            libc is not None
            and libc.mallopt(M_MMAP_THRESHOLD, int(mmap_bytes))
            and libc.mallopt(M_TRIM_THRESHOLD, int(trim_bytes))
        )
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
