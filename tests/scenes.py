"""Test footage with known transitions, painted in numpy the way FFmpeg's lavfi sources paint.

Each video is a list of shots joined by hard cuts, fades through black or cross-fades. A
shot is a source: a moving colour gradient, a panning and slightly shaking fractal-noise
texture (what natural footage looks like to a colour statistic), a static scene with a
subject crossing it, or moving colour bars with a travelling box (lavfi's testsrc). Every
source moves, so frame differences inside a shot are never zero. `Footage.truth` lists the
transitions: `(seconds, kind)` with kind `cut` (the first frame of the new shot) or `fade`
(the middle of the fade or the blend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from vqf.ops.samples import write_h264

WIDTH, HEIGHT = 160, 90


@dataclass(frozen=True)
class Shot:
    """`seconds` of one source; `seed` varies its picture, `tint` its colours (RGB gains)."""

    source: str
    seconds: float
    seed: int = 0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Join:
    """How a shot gives way to the next: `cut`, `fade` (through black) or `blend` (cross-fade).

    `seconds` is the length of the fade or blend; a fade holds black for `hold` seconds."""

    kind: str = "cut"
    seconds: float = 0.0
    hold: float = 0.0


@dataclass(frozen=True)
class Footage:
    """Shots and the joins between them (len(joins) == len(shots) - 1), at `fps`."""

    shots: tuple[Shot, ...]
    joins: tuple[Join, ...] = ()
    fps: float = 25.0
    bars: dict[str, int] = field(default_factory=dict)  # side -> pixels of black padding
    title_s: float = 0.0  # black title cards with white text at the start and the end

    @property
    def truth(self) -> list[tuple[float, str]]:
        """Known transitions: seconds and kind (`cut` or `fade`), counted in whole frames as
        `frames` paints them."""
        out, at = [], round(self.title_s * self.fps)
        for shot, join in zip(self.shots, self.joins, strict=False):
            at += round(shot.seconds * self.fps)
            span, hold = round(join.seconds * self.fps), round(join.hold * self.fps)
            if join.kind == "cut":
                out.append((at / self.fps, "cut"))
            elif join.kind == "blend":  # halfway through the blend
                out.append(((at + span / 2) / self.fps, "fade"))
            else:  # the middle of the black between fading out and fading in
                out.append(((at + span // 2 + hold / 2) / self.fps, "fade"))
            at += span + (hold if join.kind == "fade" else 0)
        return out

    @property
    def blends(self) -> list[float]:
        """Seconds of the cross-fades among `truth` (no per-frame detector sees these)."""
        joins = [j.kind for j in self.joins]
        return [t for (t, _), kind in zip(self.truth, joins, strict=True) if kind == "blend"]

    def frames(self):
        """Every frame, (HEIGHT, WIDTH, 3) uint8 RGB, in order."""
        width, height = self.picture_size
        title = round(self.title_s * self.fps)
        for i in range(title):
            yield self._pad(title_card(i, width=width, height=height, seed=0))
        n = len(self.shots)
        for k, shot in enumerate(self.shots):
            join = self.joins[k] if k < n - 1 else None
            frames = round(shot.seconds * self.fps)
            for i in range(frames):
                yield self._pad(paint(shot, i / self.fps, width=width, height=height))
            if join is None or join.kind == "cut":
                continue
            nxt = self.shots[k + 1]
            span = round(join.seconds * self.fps)
            hold = round(join.hold * self.fps)
            t_end = shot.seconds
            if join.kind == "blend":
                for i in range(span):
                    a = (i + 0.5) / span
                    old = paint(shot, t_end + i / self.fps, width=width, height=height)
                    new = paint(nxt, -(span - i) / self.fps, width=width, height=height)
                    yield self._pad(_mix(old, new, a))
                continue
            half = span // 2
            for i in range(half):  # fade out, then black, then fade in
                gain = 1.0 - (i + 1) / (half + 1)
                old = paint(shot, t_end + i / self.fps, width=width, height=height)
                yield self._pad((old * gain).astype(np.uint8))
            for _ in range(hold):
                yield self._pad(np.zeros((height, width, 3), np.uint8))
            for i in range(span - half):
                gain = (i + 1) / (span - half + 1)
                new = paint(nxt, -(span - half - i) / self.fps, width=width, height=height)
                yield self._pad((new * gain).astype(np.uint8))
        for i in range(title):
            yield self._pad(title_card(i, width=width, height=height, seed=1))

    @property
    def picture_size(self) -> tuple[int, int]:
        b = self.bars
        return (
            WIDTH - b.get("left", 0) - b.get("right", 0),
            HEIGHT - b.get("top", 0) - b.get("bottom", 0),
        )

    @property
    def bar_share(self) -> float:
        width, height = self.picture_size
        return 1.0 - width * height / (WIDTH * HEIGHT)

    @property
    def seconds(self) -> float:
        return (
            self.title_s * 2
            + sum(s.seconds for s in self.shots)
            + sum(j.seconds + j.hold for j in self.joins)
        )

    def _pad(self, picture: np.ndarray) -> np.ndarray:
        if not self.bars:
            return picture
        out = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        top, left = self.bars.get("top", 0), self.bars.get("left", 0)
        h, w = picture.shape[:2]
        out[top : top + h, left : left + w] = picture
        return out

    def write(self, path: str | Path) -> Path:
        return write_h264(path, self.frames(), width=WIDTH, height=HEIGHT, fps=self.fps)


def paint(shot: Shot, t: float, *, width: int, height: int) -> np.ndarray:
    """Frame of `shot` at `t` seconds into it (negative: before it starts, for blends)."""
    picture = SOURCES[shot.source](t, width=width, height=height, seed=shot.seed)
    return np.clip(picture * np.asarray(shot.tint, np.float32), 0, 255).astype(np.uint8)


def _gradient(t, *, width, height, seed):
    """lavfi `gradients`: two colours blended along a direction that turns; the blend moves."""
    rng = np.random.default_rng(seed)
    c0, c1 = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    turn = rng.uniform(0, 2 * np.pi) + 0.1 * t
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (x / width - 0.5) * np.cos(turn) + (y / height - 0.5) * np.sin(turn)
    a = 0.5 + 0.5 * np.sin(2 * np.pi * (u * 1.2 + 0.05 * t))
    return c0 * (1 - a[..., None]) + c1 * a[..., None]


def _noise(t, *, width, height, seed):
    """Fractal (1/f) noise, panned and shaken like a hand-held camera over a textured scene."""
    canvas = _fractal(seed, size=256)
    rng = np.random.default_rng(seed + 99)
    vx, vy = rng.uniform(-14, 14, size=2)
    shake = 1.5 * np.sin(np.array([7.0, 5.3]) * t + seed)
    x = _bounce(40 + vx * t + shake[0], 256 - width - 1)
    y = _bounce(60 + vy * t + shake[1], 256 - height - 1)
    return _crop(canvas, x=x, y=y, width=width, height=height)


def _bounce(position: float, most: float) -> float:
    """`position` folded into [0, most] the way a camera pans back at the scene's edge."""
    position = abs(position) % (2 * most)
    return 2 * most - position if position > most else position


def _subject(t, *, width, height, seed):
    """A static scene (blurred texture) that a bright disc crosses, as in a locked-off shot."""
    background = _fractal(seed + 7, size=256, slope=2.6)[:height, :width]
    rng = np.random.default_rng(seed)
    speed = rng.uniform(20, 40)
    cx = (10 + speed * t) % (width + 20) - 10
    cy = height * (0.4 + 0.2 * np.sin(t * 1.3))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (height * 0.12) ** 2
    out = background.copy()
    out[disc] = rng.uniform(150, 255, size=3)
    return out


def _bars(t, *, width, height, seed):
    """lavfi `testsrc`-like: colour bars that drift, with a white box travelling over them."""
    colours = np.array(
        [[191, 191, 191], [191, 191, 0], [0, 191, 191], [0, 191, 0], [191, 0, 191], [191, 0, 0]],
        np.float32,
    )
    colours = np.roll(colours, seed, axis=0)
    x = (np.arange(width) + int(8 * t)) % width
    out = colours[(x * len(colours) // width)][None, :, :].repeat(height, axis=0)
    size = height // 4
    bx = int(20 + 25 * t) % (width - size)
    by = int(10 + 12 * t) % (height - size)
    out[by : by + size, bx : bx + size] = 255
    return out


def title_card(i, *, width, height, seed):
    """Black with a few lines of white 'text' (blocks) in the middle, as trailers open."""
    out = np.zeros((height, width, 3), np.uint8)
    rng = np.random.default_rng(seed)
    for line in range(2):
        y0 = height // 2 - 8 + line * 9
        x = width // 4
        while x < 3 * width // 4:
            w = int(rng.integers(2, 6))
            out[y0 : y0 + 6, x : x + w] = 235
            x += w + int(rng.integers(1, 3))
    return out


@lru_cache(maxsize=32)
def _fractal(seed: int, *, size: int, slope: float = 2.0) -> np.ndarray:
    """(size, size, 3) float RGB noise with a 1/f^slope power spectrum, in 0..255."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f)) + 1.0 / size
    out = np.empty((size, size, 3), np.float32)
    base = rng.uniform(60, 190, size=3)
    for c in range(3):
        spectrum = np.fft.fft2(rng.normal(size=(size, size))) / radius ** (slope / 2)
        layer = np.real(np.fft.ifft2(spectrum))
        layer = (layer - layer.mean()) / (layer.std() + 1e-9)
        out[..., c] = base[c] + 45 * layer
    return np.clip(out, 0, 255)


def _crop(canvas: np.ndarray, *, x: float, y: float, width: int, height: int) -> np.ndarray:
    """A `width` x `height` window of `canvas` at a sub-pixel offset (bilinear)."""
    x0, y0 = int(x), int(y)
    fx, fy = x - x0, y - y0
    part = canvas[y0 : y0 + height + 1, x0 : x0 + width + 1]
    top = part[:-1, :-1] * (1 - fx) + part[:-1, 1:] * fx
    bottom = part[1:, :-1] * (1 - fx) + part[1:, 1:] * fx
    return top * (1 - fy) + bottom * fy


def _mix(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    return (a * (1 - weight) + b * weight).astype(np.uint8)


SOURCES = {"gradient": _gradient, "noise": _noise, "subject": _subject, "bars": _bars}
