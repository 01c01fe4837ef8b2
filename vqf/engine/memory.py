"""Keeping a long-running rank's heap from growing with the work it has done.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
blocks of that size come from the heap instead of their own mappings. A rank allocates and
frees decoded chunks and clip buffers of a few MiB to tens of MiB for hours, from several
threads, so its heap fragments and RSS creeps up with video length even though the frames in
flight stay under the budget. A fixed threshold keeps such blocks in mappings of their own,
returned to the system the moment they are freed (measured with `vqf bench-engine memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD_BYTES = 1 << 20
_done = False


def fix_mmap_threshold(threshold: int = THRESHOLD_BYTES) -> bool:
    """Sets glibc's mmap threshold to `threshold` once per process; False off glibc."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to do
        ok = False
    _done = ok
    if not ok:
        log.debug("mallopt is not available: the heap keeps the allocator's own thresholds")
    return ok
