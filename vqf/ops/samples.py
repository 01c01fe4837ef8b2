"""Sample videos that show one defect each, for the weight-free filters' tests and the demo.

Every sample starts from the synthetic "moving" picture (vqf/video/synth.py) and changes one
thing: black letterbox bars, a still image, a blur, a dark exposure, or two hard cuts between
shots of different colours. `normal` changes nothing. H.264 through PyAV, small frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

DEFECTS = ("normal", "letterboxed", "still", "blurred", "dark", "cuts")
# shot colours of the `cuts` sample: far apart in every channel's histogram
SHOT_BASES = ((200, 40, 40), (30, 180, 60), (40, 60, 200))


def make_sample(
    path: str | Path,
    *,
    defect: str = "normal",
    width: int = 160,
    height: int = 120,
    seconds: float = 3.0,
    fps: float = 12.0,
    seed: int = 0,
) -> Path:
    """Encodes a `width` x `height` H.264 video at `path` that shows `defect`; returns the path."""
    if defect not in DEFECTS:
        raise ValueError(f"defect {defect!r} is not one of {', '.join(DEFECTS)}")
    n = max(2, round(seconds * fps))
    draw = _PAINTERS[defect]
    frames = (draw(i, n=n, width=width, height=height, seed=seed) for i in range(n))
    return write_h264(path, frames, width=width, height=height, fps=fps)


def write_h264(
    path: str | Path, frames: Iterator[np.ndarray], *, width: int, height: int, fps: float
) -> Path:
    """Encodes (height, width, 3) uint8 RGB frames as H.264 at a constant `fps`."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18", "tune": "zerolatency"}
        for picture in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _moving(i: int, *, width: int, height: int, seed: int) -> np.ndarray:
    from vqf.video.synth import draw_frame

    return draw_frame(i + seed, width=width, height=height, pattern="moving")


def _normal(i, *, n, width, height, seed):
    return _moving(i, width=width, height=height, seed=seed)


def _letterboxed(i, *, n, width, height, seed):
    bar = max(2, height // 6)
    out = np.zeros((height, width, 3), np.uint8)
    out[bar : height - bar] = _moving(i, width=width, height=height - 2 * bar, seed=seed)
    return out


def _still(i, *, n, width, height, seed):
    from vqf.video.synth import draw_frame

    # frame 37 has black and white cells in the frame-number bar, so no edge of it is uniform
    return draw_frame(37 + seed, width=width, height=height, pattern="moving")


def _blurred(i, *, n, width, height, seed):
    radius = max(2, min(width, height) // 20)
    return box_blur(_moving(i, width=width, height=height, seed=seed), radius=radius, passes=3)


def _dark(i, *, n, width, height, seed):
    return (_moving(i, width=width, height=height, seed=seed) * 0.12).astype(np.uint8)


def _cuts(i, *, n, width, height, seed):
    shot = min(len(SHOT_BASES) - 1, i * len(SHOT_BASES) // n)
    base = np.array(SHOT_BASES[shot], np.float32)
    picture = _moving(i, width=width, height=height, seed=seed).astype(np.float32)
    return np.clip(base + 0.3 * picture, 0, 255).astype(np.uint8)


def box_blur(img: np.ndarray, *, radius: int, passes: int = 1) -> np.ndarray:
    """Separable box blur of an (H, W, C) image; three passes approximate a Gaussian."""
    out = img.astype(np.float32)
    size = 2 * radius + 1
    for _ in range(passes):
        for axis in (0, 1):
            pad = [(0, 0)] * out.ndim
            pad[axis] = (radius, radius)
            padded = np.pad(out, pad, mode="edge")
            total = np.cumsum(padded, axis=axis, dtype=np.float64)
            total = np.insert(total, 0, 0.0, axis=axis)
            length = out.shape[axis]
            hi = np.take(total, np.arange(size, size + length), axis=axis)
            lo = np.take(total, np.arange(0, length), axis=axis)
            out = ((hi - lo) / size).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


_PAINTERS: dict[str, Callable[..., np.ndarray]] = {
    "normal": _normal,
    "letterboxed": _letterboxed,
    "still": _still,
    "blurred": _blurred,
    "dark": _dark,
    "cuts": _cuts,
}
