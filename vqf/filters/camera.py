"""Camera: how the camera moves (static, pan, tilt, zoom, shake), whole video and per window.

On the frames' own device each decoded frame of the dense stream shrinks to a luma thumbnail
(`thumb_width` pixels wide) and is matched to the frame before it: a coarse grid of blocks,
each searched over shifts of up to `search` thumbnail pixels (squared differences, sub-pixel
by a parabola), one camera model per pair (shift, zoom and roll about the centre) fitted to
the block shifts by reweighted least squares, so that blocks moving on their own (a subject)
lose their say, then polished on every pixel (Gauss-Newton), which keeps small steps
unbiased. With the camera's motion taken out, the share of the picture that still changes by
more than `change_level` is the pair's subject motion. A pair where most of the picture
changes anyway, or whose step is a jump unlike its neighbours', is a cut and carries no camera
motion. Only these per-pair numbers leave the device.

On the host, per window and for the whole video, over the pairs inside it:
- `pan` (frame widths per second, + right), `tilt` (frame heights per second, + up), `zoom`
  (log scale per second, + in) and `roll` (radians per second, + the picture turns
  clockwise): net motion over time;
- `shake`: how far the camera's path strays from its own smooth course (a straight line
  fitted over each `shake_span_s`), the median over the frames, as a share of the frame (a
  single bump is no shaky video);
- `subject_motion`: the mean share of the picture that moves on its own.
Each rate against its option (`pan_min`, `zoom_min`, `roll_min`, `shake_min`) gives how
strongly that motion is present (0.5 at the option); `result` combines them, the motions
taken as independent, into scores of `static`, `pan_left`/`pan_right`,
`tilt_up`/`tilt_down`, `zoom_in`/`zoom_out`, `shaky` and `mixed` (two motions at once, or
roll) that sum to 1; the label is the highest. The whole video's `result` is the mean of its
windows'. `still` is true for a static camera over a picture where less than
`still_subject_max` moves: nothing happens in the video (never where no pair was measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqf.errors import ConfigError
from vqf.filters.base import register
from vqf.filters.frames import DENSE, FrameFilter, FrameLayout, Pixels, check_range, rounded

if TYPE_CHECKING:
    import torch

LABELS = (
    "static", "pan_left", "pan_right", "tilt_up", "tilt_down",
    "zoom_in", "zoom_out", "shaky", "mixed",
)  # fmt: skip
FEATURES = ("dx", "dy", "scale", "roll", "moving", "valid")
CUT_SHARE = 0.6  # a pair where more of the picture changes than this is a cut
JUMP, JUMP_RATIO = 0.05, 4.0  # a step this large and this unlike its neighbours is a cut
INLIER_PX = 1.0  # a block this far (thumbnail pixels) off the camera model moves on its own


@dataclass(frozen=True)
class CameraOptions:
    pan_min: float = 0.025  # frame widths (or heights) per second that make a pan (a tilt)
    zoom_min: float = 0.04  # log scale per second that makes a zoom (1.04x a second)
    roll_min: float = 0.05  # radians per second of roll that count as motion
    shake_min: float = 0.005  # median stray of the camera's path (share of the frame): shaky
    shake_span_s: float = 1.0  # the span over which the camera's smooth course is fitted
    change_level: float = 0.08  # luma change (0..1) the camera's motion leaves unexplained
    still_subject_max: float = 0.002  # `still`: a static camera and less than this moving
    thumb_width: int = 64  # thumbnail width the blocks are matched on
    search: int = 3  # largest shift searched per pair of frames, half-thumbnail pixels
    block: int = 4  # block size, half-thumbnail pixels

    def __post_init__(self):
        check_range("camera", "pan_min", self.pan_min, high=10.0)
        check_range("camera", "zoom_min", self.zoom_min, high=10.0)
        check_range("camera", "roll_min", self.roll_min, high=10.0)
        check_range("camera", "shake_min", self.shake_min)
        check_range("camera", "shake_span_s", self.shake_span_s, low=0.25, high=10.0)
        check_range("camera", "change_level", self.change_level)
        check_range("camera", "still_subject_max", self.still_subject_max)
        for key, low, high in (("thumb_width", 32, 256), ("search", 1, 16), ("block", 2, 32)):
            value = getattr(self, key)
            if not low <= value <= high:
                raise ConfigError(
                    f"filters.camera.options.{key} = {value!r} is out of range",
                    hint=f"use {low} to {high} pixels",
                )


@register
class CameraFilter(FrameFilter):
    name = "camera"
    labels = LABELS
    reads = DENSE  # consecutive frames of the dense grid
    keys = {"frames": "camera"}
    Options = CameraOptions

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        import torch.nn.functional as F

        y = pixels.luma
        width = min(self.options.thumb_width, y.shape[2])
        height = max(16, round(width * y.shape[1] / y.shape[2]))
        thumb = pixels.with_prev(
            "luma", lambda x: F.interpolate(x[:, None], size=(height, width), mode="area")[:, 0]
        )
        out = pair_motion(thumb[:-1], thumb[1:], opts=self.options)
        if pixels.prev_luma is None:  # a video's first frame follows nothing
            out = {k: F.pad(v, (1, 0), value=float("nan")) for k, v in out.items()}
        return out

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        times = layout.times
        dt = np.maximum(np.diff(times), 0.0)
        valid = np.nan_to_num(features["valid"][1:]) > 0.5
        valid &= ~jumps(features["dx"][1:], features["dy"][1:], times)
        steps = {k: np.where(valid, np.nan_to_num(features[k][1:]), 0.0) for k in FEATURES[:4]}
        moving = np.nan_to_num(features["moving"][1:])
        stray = path_stray(times, steps["dx"], steps["dy"], span_s=self.options.shake_span_s)
        pairs = _Pairs(dt=dt, valid=valid, steps=steps, moving=moving, stray=stray)
        windows = {}
        for index, start, end, take in layout.segments:
            lo, hi = int(take.min()), int(take.max())  # pairs lo+1..hi: frames lo..hi
            windows[str(index)] = {
                "duration": [round(start, 3), round(end, 3)],
                "camera": self._judge(pairs, lo, hi),
            }
        whole = self._judge(pairs, 0, len(times) - 1)
        if windows:
            mean = {
                label: float(np.mean([w["camera"]["result"][label] for w in windows.values()]))
                for label in LABELS
            }
            whole.update(scored(mean))
        whole["still"] = bool(
            valid.any()
            and whole["label"] == "static"
            and whole["subject_motion"] < self.options.still_subject_max
        )
        return {**whole, "segments": windows}

    def _judge(self, pairs: _Pairs, lo: int, hi: int) -> dict[str, Any]:
        """Label, scores and magnitudes of the pairs between decoded frames lo and hi."""
        opts, span = self.options, slice(lo, hi)
        valid = pairs.valid[span]
        seconds = float(pairs.dt[span][valid].sum())
        rate = {
            k: float(v[span].sum()) / seconds if seconds > 0 else 0.0
            for k, v in pairs.steps.items()
        }
        stray = pairs.stray[lo : hi + 1]
        magnitudes = {
            "pan": -rate["dx"],  # the picture moves left when the camera pans right
            "tilt": rate["dy"],  # ... and down when it tilts up (image rows grow downwards)
            "zoom": rate["scale"],
            "roll": rate["roll"],
            "shake": float(np.median(stray)) if len(stray) else 0.0,
            "subject_motion": float(pairs.moving[span].mean()) if hi > lo else 0.0,
        }
        scores = label_scores(
            pan=magnitudes["pan"] / opts.pan_min,
            tilt=magnitudes["tilt"] / opts.pan_min,
            zoom=magnitudes["zoom"] / opts.zoom_min,
            roll=magnitudes["roll"] / opts.roll_min,
            shake=magnitudes["shake"] / opts.shake_min,
        )
        return {**scored(scores), **{k: rounded(v) for k, v in magnitudes.items()}}


@dataclass(frozen=True)
class _Pairs:
    """Per pair of consecutive decoded frames (pair i: frames i and i + 1) on the host."""

    dt: np.ndarray
    valid: np.ndarray
    steps: dict[str, np.ndarray]
    moving: np.ndarray
    stray: np.ndarray  # per decoded frame


def scored(scores: dict[str, float]) -> dict[str, Any]:
    from vqf.schema import filter_result

    return filter_result(scores)


def presence(ratio: float) -> float:
    """How strongly a motion is present from its rate over its threshold: 0.5 at the threshold."""
    r4 = min(abs(ratio), 100.0) ** 4
    return r4 / (1.0 + r4)


def label_scores(*, pan: float, tilt: float, zoom: float, roll: float, shake: float) -> dict:
    """Scores of each label (summing to 1) from the signed rates over their thresholds, with
    the motions taken as independent: shaky, else none (static), one (its label) or several."""
    g = {
        "pan": presence(pan),
        "tilt": presence(tilt),
        "zoom": presence(zoom),
        "roll": presence(roll),
    }
    calm = 1.0 - presence(shake)
    only = {k: g[k] * math.prod(1.0 - g[j] for j in g if j != k) for k in g}
    none = math.prod(1.0 - v for v in g.values())
    scores = dict.fromkeys(LABELS, 0.0)
    scores["static"] = calm * none
    scores["pan_right" if pan >= 0 else "pan_left"] = calm * only["pan"]
    scores["tilt_up" if tilt >= 0 else "tilt_down"] = calm * only["tilt"]
    scores["zoom_in" if zoom >= 0 else "zoom_out"] = calm * only["zoom"]
    scores["shaky"] = 1.0 - calm
    scores["mixed"] = calm * (1.0 - none - only["pan"] - only["tilt"] - only["zoom"])
    return scores


def jumps(dx: np.ndarray, dy: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Pairs whose step is a jump, not motion: over JUMP of the frame and JUMP_RATIO times the
    steps of the pairs within half a second (a cut between two views of one scene)."""
    step = np.hypot(np.nan_to_num(dx), np.nan_to_num(dy))
    dt = np.maximum(np.diff(times), 1e-6)
    rate = step / dt
    mid = (times[1:] + times[:-1]) / 2
    out = np.zeros(len(step), bool)
    for i in np.flatnonzero(step > JUMP):
        near = np.abs(mid - mid[i]) <= 0.5
        near[i] = False
        baseline = float(np.median(rate[near])) * dt[i] if near.any() else 0.0
        out[i] = step[i] > JUMP_RATIO * baseline
    return out


def path_stray(times: np.ndarray, dx: np.ndarray, dy: np.ndarray, *, span_s: float) -> np.ndarray:
    """Per decoded frame: the camera path's distance from a straight line fitted over the
    frames within `span_s` / 2 of it (prefix sums keep it linear in the video's length)."""
    n = len(times)
    if n < 3:
        return np.zeros(n)
    t = times - times[0]
    lo = np.searchsorted(t, t - span_s / 2, side="left")
    hi = np.searchsorted(t, t + span_s / 2, side="right")

    def window_sum(values):
        prefix = np.concatenate([[0.0], np.cumsum(values)])
        return prefix[hi] - prefix[lo]

    count, st, stt = window_sum(np.ones(n)), window_sum(t), window_sum(t * t)
    var = stt - st * st / count
    out = np.zeros(n)
    for step in (dx, dy):
        path = np.concatenate([[0.0], np.cumsum(step)])
        sp, stp = window_sum(path), window_sum(t * path)
        slope = np.where(var > 1e-12, (stp - st * sp / count) / np.maximum(var, 1e-12), 0.0)
        fit = sp / count + slope * (t - st / count)
        out += (path - fit) ** 2
    return np.sqrt(out)


def pair_motion(a: torch.Tensor, b: torch.Tensor, *, opts: CameraOptions) -> dict:
    """(n, H, W) luma thumbnails of frames and of the frames after them -> per pair: the
    camera's shift (`dx` share of the width, `dy` of the height), `scale` (log), `roll`
    (radians), the share of the picture `moving` on its own, and `valid` (0 for a cut)."""
    import torch
    import torch.nn.functional as F

    n, height, width = a.shape
    if n == 0 or min(height, width) < 4 * (opts.search + 2):  # no room for one block
        out = {k: a.new_full((n,), float("nan")) for k in FEATURES}
        return {**out, "valid": a.new_zeros(n)}
    za, zb = standardised(a), standardised(b)
    # blocks are matched at half the thumbnail's size (a quarter of the pixels, twice the
    # reach); the fit on every pixel then brings the model to the full size's precision
    half_a, half_b = (F.avg_pool2d(z[:, None], 2)[:, 0] for z in (za, zb))
    shifts, weights, centres = block_shifts(half_a, half_b, opts=opts)
    model, inliers = fit_camera(shifts, weights, centres)
    model = refine(za, zb, model * torch.tensor([2.0, 2.0, 1.0, 1.0], device=model.device))
    moving = unexplained(a, b, model, level=opts.change_level)
    tx, ty, s, r = model.unbind(1)
    enough = (inliers > 0.25) & (weights.sum(dim=1) > 0)
    valid = enough & (moving < CUT_SHARE)
    return {
        "dx": tx / width,
        "dy": ty / height,
        "scale": torch.log1p(s.clamp(min=-0.5)),
        "roll": r,
        "moving": moving,
        "valid": valid.float(),
    }


def standardised(y: torch.Tensor) -> torch.Tensor:
    """Each thumbnail at zero mean and unit spread, so a fade or flicker is no motion."""
    mean = y.mean(dim=(1, 2), keepdim=True)
    spread = y.std(dim=(1, 2), keepdim=True).clamp(min=0.02)
    return (y - mean) / spread


def block_shifts(a: torch.Tensor, b: torch.Tensor, *, opts: CameraOptions):
    """Where each block of `a` went in `b`: (n, B, 2) shifts in pixels (x, y), (n, B) weights
    (how sharply the best shift stands out; 0 for flat blocks and at the search's edge) and
    (B, 2) block centres relative to the picture's centre."""
    import torch
    import torch.nn.functional as F

    n, height, width = a.shape
    r, size = opts.search, opts.block
    rows, cols = (height - 2 * r) // size, (width - 2 * r) // size
    if rows < 1 or cols < 1:
        raise ConfigError(
            f"filters.camera.options: a {width}x{height} thumbnail leaves no block to match",
            hint="lower search or block, or raise thumb_width",
        )
    y0, x0 = (height - rows * size) // 2, (width - cols * size) // 2
    ref = a[:, y0 : y0 + rows * size, x0 : x0 + cols * size]
    costs = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            moved = b[:, y0 + dy : y0 + dy + rows * size, x0 + dx : x0 + dx + cols * size]
            costs.append(F.avg_pool2d((moved - ref).square()[:, None], size)[:, 0])
    k = 2 * r + 1
    cost = torch.stack(costs, dim=1).view(n, k, k, rows * cols)  # (n, dy, dx, block)
    best = cost.view(n, k * k, -1).argmin(dim=1)
    iy, ix = best // k, best % k

    def at(oy, ox):
        yy, xx = (iy + oy).clamp(0, k - 1), (ix + ox).clamp(0, k - 1)
        return cost.view(n, k * k, -1).gather(1, (yy * k + xx)[:, None])[:, 0]

    c0 = at(0, 0)
    subpixel, sharpness = [], []
    for oy, ox in ((0, 1), (1, 0)):
        minus, plus = at(-oy, -ox), at(oy, ox)
        curve = (minus + plus - 2 * c0).clamp(min=1e-6)
        subpixel.append(((minus - plus) / (2 * curve)).clamp(-0.5, 0.5))
        sharpness.append(curve)
    inside = (ix > 0) & (ix < k - 1) & (iy > 0) & (iy < k - 1)
    shifts = torch.stack([ix - r + subpixel[0], iy - r + subpixel[1]], dim=2).float()
    weights = torch.minimum(*sharpness) * inside
    gy, gx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    centres = torch.stack(
        [x0 + (gx + 0.5) * size - width / 2, y0 + (gy + 0.5) * size - height / 2], dim=2
    )
    return shifts, weights, centres.view(-1, 2).float().to(a.device)


def fit_camera(shifts: torch.Tensor, weights: torch.Tensor, centres: torch.Tensor, *, rounds=5):
    """Shift, zoom and roll about the centre (tx, ty, s, r: a point p moves by t + s p + r p⊥)
    that best explain the block shifts, reweighted so outlying blocks lose their say.
    Returns (n, 4) parameters and the share of the weight on blocks that agree with them."""
    import torch

    px, py = centres.unbind(1)
    one, zero = torch.ones_like(px), torch.zeros_like(px)
    design = torch.stack(
        [torch.stack([one, zero, px, -py], 1), torch.stack([zero, one, py, px], 1)], 1
    )  # (B, 2, 4): x and y rows
    scale = weights.mean(dim=1, keepdim=True).clamp(min=1e-9)
    base = weights / scale
    w = base
    ridge = 1e-3 * torch.eye(4, device=shifts.device)
    for _ in range(rounds):
        normal = torch.einsum("nb,bki,bkj->nij", w, design, design) + ridge
        rhs = torch.einsum("nb,bki,nbk->ni", w, design, shifts)
        model = torch.linalg.solve(normal, rhs)
        error = (shifts - torch.einsum("bki,ni->nbk", design, model)).norm(dim=2)
        w = base / (1.0 + (error / INLIER_PX) ** 2) ** 2  # Cauchy-like: far blocks fade
    agree = (base * (error <= INLIER_PX)).sum(dim=1) / base.sum(dim=1).clamp(min=1e-9)
    return model, agree


def refine(a: torch.Tensor, b: torch.Tensor, model: torch.Tensor, *, rounds: int = 2):
    """The camera model polished on every pixel (Gauss-Newton on the two pictures'
    mean gradient), so sub-pixel steps come out unbiased; pixels that disagree (a subject,
    new content at the edges) are weighted down as in `fit_camera`."""
    import torch

    n, height, width = a.shape
    gy, gx = centred_grid(a)
    ay, ax = torch.gradient(a, dim=(1, 2))
    for _ in range(rounds):
        moved, covered = warp(b, model, forward=True)
        my, mx = torch.gradient(moved, dim=(1, 2))
        sx, sy = (ax + mx) / 2, (ay + my) / 2
        error = moved - a
        w = covered / (1.0 + (error / 0.5) ** 2) ** 2
        rows = torch.stack([sx, sy, sx * gx + sy * gy, sy * gx - sx * gy], dim=1).view(n, 4, -1)
        weighted = rows * w.view(n, 1, -1)
        normal = weighted @ rows.transpose(1, 2) + 1e-3 * torch.eye(4, device=a.device)
        step = torch.linalg.solve(normal, -(weighted @ error.view(n, -1, 1))[..., 0])
        model = model + step
    return model


def centred_grid(a: torch.Tensor):
    """Pixel centres (y, x) of `a`'s pictures relative to the picture's centre, in pixels."""
    import torch

    height, width = a.shape[1:]
    ys = torch.arange(height, device=a.device, dtype=a.dtype) + 0.5 - height / 2
    xs = torch.arange(width, device=a.device, dtype=a.dtype) + 0.5 - width / 2
    return torch.meshgrid(ys, xs, indexing="ij")


def warp(pictures: torch.Tensor, model: torch.Tensor, *, forward: bool):
    """`pictures` resampled through the camera model: forward (picture of the next frame
    seen where each pixel of this one went) or back (this frame seen from the next), and
    the mask of pixels the resampled picture covers."""
    import torch
    import torch.nn.functional as F

    n, height, width = pictures.shape
    gy, gx = centred_grid(pictures)
    tx, ty, s, r = (v.view(n, 1, 1) for v in model.unbind(1))
    sign = 1.0 if forward else -1.0  # back: to first order, the inverse motion
    sx = gx + sign * (tx + s * gx - r * gy)
    sy = gy + sign * (ty + r * gx + s * gy)
    grid = torch.stack([sx / (width / 2), sy / (height / 2)], dim=3)
    out = F.grid_sample(pictures[:, None], grid, align_corners=False, padding_mode="border")
    covered = (sx.abs() <= width / 2) & (sy.abs() <= height / 2)
    return out[:, 0], covered.to(pictures.dtype)


def unexplained(a: torch.Tensor, b: torch.Tensor, model: torch.Tensor, *, level: float):
    """Share of `b` that differs by more than `level` from `a` moved by the camera model
    (where the moved picture covers it)."""
    moved, covered = warp(a, model, forward=False)
    changed = ((moved - b).abs() > level).to(a.dtype) * covered
    return changed.sum(dim=(1, 2)) / covered.sum(dim=(1, 2)).clamp(min=1)
