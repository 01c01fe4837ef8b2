"""The safe crop: the largest axis-aligned rectangle of the frame that no abnormal box overlaps.

Rule: given boxes in frame pixels (from all detection frames together), every maximal empty
rectangle has each edge on the frame border or on a box edge, so the left edge is tried at 0
and at every box's right edge, the right edge at the width and every box's left edge; for each
such column span, the boxes that overlap it block their rows, and the tallest free run of rows
is the best height. The largest area wins (ties: the first found, scanning left to right). No
boxes means no crop (the whole frame); a best rectangle under `min_area` of the frame also
means no crop, because cropping would throw away most of the picture: the boxes are still
reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = Sequence[float]


def safe_crop(
    boxes: Sequence[Box], *, width: int, height: int, min_area: float = 0.5
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) integer pixels of the largest box-free rectangle, or None (whole frame)."""
    boxes = [b for b in (_clip(b, width, height) for b in boxes) if b is not None]
    if not boxes:
        return None
    lefts = sorted({0.0, *(b[2] for b in boxes)})
    rights = sorted({float(width), *(b[0] for b in boxes)})
    best, best_area = None, 0.0
    for left in lefts:
        for right in rights:
            if right <= left:
                continue
            blocked = [(b[1], b[3]) for b in boxes if b[0] < right and b[2] > left]
            top, bottom = _tallest_gap(blocked, height)
            area = (right - left) * (bottom - top)
            if area > best_area:
                best, best_area = (left, top, right, bottom), area
    if best is None or best_area < min_area * width * height:
        return None
    x0, y0, x1, y1 = best
    # Round inwards so the crop never reaches into a box.
    return math.ceil(x0), math.ceil(y0), math.floor(x1), math.floor(y1)


def _clip(box: Box, width: int, height: int) -> tuple[float, float, float, float] | None:
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _tallest_gap(blocked: list[tuple[float, float]], height: int) -> tuple[float, float]:
    """The longest run of [0, height] that none of the `blocked` row intervals covers."""
    best, cursor = (0.0, 0.0), 0.0
    for start, end in sorted(blocked) + [(float(height), float(height))]:
        if start - cursor > best[1] - best[0]:
            best = (cursor, start)
        cursor = max(cursor, end)
    return best
