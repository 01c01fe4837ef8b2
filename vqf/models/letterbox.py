"""Letterbox geometry: a frame scaled to fit a square, centred, padded (ultralytics' layout)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Letterbox:
    """How a `width` x `height` frame sits in a `size` x `size` detector input."""

    size: int
    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, *, width: int, height: int, size: int) -> Letterbox:
        """The centred letterbox ultralytics uses: scale to fit, pad both sides equally."""
        scale = min(size / width, size / height)
        new_w, new_h = round(width * scale), round(height * scale)
        return cls(size=size, scale=scale, pad_x=(size - new_w) / 2, pad_y=(size - new_h) / 2)

    @property
    def resized(self) -> tuple[int, int]:
        """(width, height) of the scaled frame inside the square."""
        return round(self.size - 2 * self.pad_x), round(self.size - 2 * self.pad_y)

    def to_frame(
        self, box: tuple[float, float, float, float], *, width: int, height: int
    ) -> tuple[float, float, float, float]:
        """A letterboxed xyxy box in original-frame pixels, clipped to the frame."""
        x0, y0, x1, y1 = box
        x0 = min(max((x0 - self.pad_x) / self.scale, 0.0), width)
        x1 = min(max((x1 - self.pad_x) / self.scale, 0.0), width)
        y0 = min(max((y0 - self.pad_y) / self.scale, 0.0), height)
        y1 = min(max((y1 - self.pad_y) / self.scale, 0.0), height)
        return x0, y0, x1, y1
