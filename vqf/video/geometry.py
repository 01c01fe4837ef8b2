"""Frame geometry, defined once: display rotation, regions of interest, the detection letterbox.

Every stage speaks of the *displayed* frame (the stored frame turned counter-clockwise by the
container's rotation, as a player shows it): detection boxes, safe crops and ROIs are in its
pixels or relative to it. Only the DALI graph works in stored coordinates, through
`stored_roi`, because it rotates after the resize.

The letterbox scales the displayed frame to fit a `size` x `size` square and pads right and
bottom with grey, so a box maps back with a scale and no offset: the graph's detect head, the
detector's boxes, the detection filters and the seed-style baseline all use this class.
"""

from __future__ import annotations

from dataclasses import dataclass

LETTERBOX_FILL = 114  # the grey YOLO pads with

Box = tuple[float, float, float, float]


def displayed_size(*, width: int, height: int, rotation: int) -> tuple[int, int]:
    """(width, height) of a stored `width` x `height` frame as displayed."""
    return (height, width) if rotation in (90, 270) else (width, height)


@dataclass(frozen=True)
class Letterbox:
    """A `width` x `height` displayed frame scaled into a `size` square, padded right and bottom.

    x_square = x * scale_x, y_square = y * scale_y; the picture covers the top-left
    `resized` corner of the square.
    """

    size: int
    width: int
    height: int
    scale_x: float
    scale_y: float

    @classmethod
    def fit(cls, *, width: int, height: int, size: int) -> Letterbox:
        """The letterbox of a displayed `width` x `height` frame in a `size` square."""
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        return cls(
            size=size, width=width, height=height, scale_x=new_w / width, scale_y=new_h / height
        )

    @property
    def resized(self) -> tuple[int, int]:
        """(width, height) of the picture inside the square."""
        return round(self.width * self.scale_x), round(self.height * self.scale_y)

    def to_frame(self, box: Box) -> Box:
        """A box in square pixels -> displayed-frame pixels, clipped to the frame."""
        x0, y0, x1, y1 = box
        return (
            min(max(x0 / self.scale_x, 0.0), self.width),
            min(max(y0 / self.scale_y, 0.0), self.height),
            min(max(x1 / self.scale_x, 0.0), self.width),
            min(max(y1 / self.scale_y, 0.0), self.height),
        )

    def relative(self, box: Box) -> Box:
        """A displayed-frame pixel box as 0..1 fractions of the frame."""
        x0, y0, x1, y1 = box
        return x0 / self.width, y0 / self.height, x1 / self.width, y1 / self.height


def stored_roi(box: Box, *, rotation: int) -> Box:
    """Maps a relative (x0, y0, x1, y1) box in the displayed frame into the stored frame.

    The displayed frame is the stored one turned counter-clockwise by `rotation` degrees.
    """
    x0, y0, x1, y1 = box
    if rotation == 90:  # displayed (x, y) shows stored (1 - y, x)
        return 1 - y1, x0, 1 - y0, x1
    if rotation == 180:
        return 1 - x1, 1 - y1, 1 - x0, 1 - y0
    if rotation == 270:  # displayed (x, y) shows stored (y, 1 - x)
        return y0, 1 - x1, y1, 1 - x0
    return x0, y0, x1, y1
