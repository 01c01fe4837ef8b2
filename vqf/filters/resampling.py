"""The grid a video was enlarged from: find `m` samples that the frames' lines were resampled from.

An upscaler computes each output pixel as a fixed kernel over a few samples of a coarser grid.
So every line of an enlarged frame lies, up to the codec's noise, in the span of that kernel
placed on the coarse grid; a blurred line of the same softness does not, because blur leaves
content up to the frequency where it fades, which no coarser grid holds exactly. This module
fits each candidate grid by least squares and looks for the one that fits far better than the
grids one sample coarser and one finer: that dip marks a resampled video and its grid gives the
factor. A Gaussian blur, a soft lens or a soft encode has no such grid.

The model is the centred alignment every common scaler uses (FFmpeg's swscale, OpenCV,
Pillow): output pixel `i` of `n` sits at `(i + 0.5) * m / n - 0.5` on the grid of `m`, and
taps past the edges repeat the edge sample. Kernels: linear, cubic (a = -0.6, swscale's
bicubic) and Lanczos-3; the best fit among them counts.

Calibration (`FIT_MAX`), the best axis's fit on real clips (tests/footage.py) encoded with
x264 at CRF 18 after the change:
- enlarged 2, 3 and 4x with swscale's bicubic (the ladders of tests/test_quality_ladders.py,
  small and full-size copies, four clips): 0.20-0.54;
- enlarged 1.5, 2 and 2.5x with swscale's bilinear, bicubic, Lanczos and spline kernels (three
  clips): 0.27-0.64 (the worst: bikes, 1.5x, Lanczos);
- not enlarged: Gaussian blur sigma 0.7-4, a 3x3 box blur, CRF 18-48, noise, darker and
  brighter copies: 0.71 and up, most 0.8-1.0.
A soft, compressed picture also fits the grids its codec's 4- and 8-pixel blocks line up with
(0.38-0.6 at 8/7 and 4/3 on the full-size copies at CRF 18-40, nothing enlarged), so those two
ratios are not searched: an enlargement by 4/3 or 8/7 is not reported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FIT_MAX = 0.66  # a grid whose residual is under this share of its neighbours' marks an upscale
LINES = 256  # lines fitted per axis, spread over the frames
WIDTH = 320  # pixels of each line fitted (the centre), enough for a sharp dip
CHUNK = 64  # grids fitted in one batch
MIN_FACTOR = 1.1  # the smallest enlargement searched
SHORTLIST = 6  # grids screened in that are fitted in full
CODEC_RATIOS = (8 / 7, 4 / 3)  # factors a codec's blocks mimic (above): not searched


def linear(t: torch.Tensor) -> torch.Tensor:
    return (1 - t.abs()).clamp_min(0)


def cubic(t: torch.Tensor, a: float = -0.6) -> torch.Tensor:
    t = t.abs()
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return near.where(t < 1, far.where(t < 2, 0.0))


def lanczos3(t: torch.Tensor) -> torch.Tensor:
    import torch

    return (torch.sinc(t) * torch.sinc(t / 3)).where(t.abs() < 3, 0.0)


KERNELS = {"linear": (linear, 1), "cubic": (cubic, 2), "lanczos3": (lanczos3, 3)}  # (w(t), radius)


def best_grid(
    y: torch.Tensor, *, start: int, span: int, factors: tuple[float, float]
) -> tuple[float, float]:
    """(fit, factor) along the last axis of `y` (D, H, W) luma: the best grid's residual over
    its neighbours' (lower = surer) and `span / m`, searched over the `factors` (low, high).
    `y[..., 0]` is pixel `start` of a picture `span` pixels long (bars and crops cut off).

    Every grid is screened with the cubic kernel on a quarter of the lines and the middle half
    of the window; the SHORTLIST best are then fitted with every kernel on all of them."""
    import torch

    low, high = max(4, math.ceil(span / factors[1])), math.floor(span / max(factors[0], MIN_FACTOR))
    grids = [m for m in range(low, high + 1) if not codec_grid(span / m)]
    if not grids:
        return math.inf, 1.0
    lines = y.reshape(-1, y.shape[-1])
    if len(lines) > LINES:
        pick = torch.linspace(0, len(lines) - 1, LINES, device=y.device).round().long()
        lines = lines[pick]
    cut = max(0, (lines.shape[1] - WIDTH) // 2)
    lines = lines[:, cut : cut + WIDTH].double()  # float32 loses the small residuals
    lines = lines - lines.mean(dim=1, keepdim=True)
    start += cut
    quarter = lines.shape[1] // 4
    screen = dips(lines[::4, quarter:-quarter], start + quarter, span, grids, KERNELS["cubic"])
    shortlist = [grids[int(k)] for k in screen.argsort()[:SHORTLIST]]
    best = (math.inf, 1.0)
    for kernel in KERNELS.values():
        fit = dips(lines, start, span, shortlist, kernel)
        k = int(fit.argmin())
        best = min(best, (float(fit[k]), span / shortlist[k]))
    return best


def codec_grid(factor: float) -> bool:
    """Whether `factor` is one a codec's 4- and 8-pixel blocks mimic (8/7, 4/3)."""
    return any(abs(factor / r - 1) < 0.005 for r in CODEC_RATIOS)


def dips(lines: torch.Tensor, start: int, span: int, grids: list[int], kernel) -> torch.Tensor:
    """(len(grids),) on the host: each grid's residual over the smaller of its neighbours'."""
    import torch

    around = sorted({g + d for g in grids for d in (-1, 0, 1)})
    residual = torch.cat(
        [
            grid_residuals(
                lines, start=start, span=span, grids=around[i : i + CHUNK], kernel=kernel
            )
            for i in range(0, len(around), CHUNK)
        ]
    ).cpu()
    at = {g: float(r) for g, r in zip(around, residual)}
    return torch.tensor([ratio(at[g], min(at[g - 1], at[g + 1])) for g in grids])


def ratio(residual: float, neighbours: float) -> float:
    if not math.isfinite(neighbours):  # no neighbour fitted: no dip to see
        return math.inf
    return residual / max(neighbours, 1e-12)


def grid_residuals(
    lines: torch.Tensor, *, start: int, span: int, grids: list[int], kernel
) -> torch.Tensor:
    """(len(grids),) mean squared residual of `lines` (L, W) fitted by least squares with the
    kernel placed on each grid of `m` samples."""
    import torch

    weight, radius = kernel
    n_lines, width = lines.shape
    m = torch.tensor(grids, dtype=torch.float64).unsqueeze(1)  # (C, 1)
    src = (torch.arange(start, start + width, dtype=torch.float64) + 0.5) * m / span - 0.5
    base = src.floor()
    first = (base[:, :1] - radius + 1).clamp_min(0)  # (C, 1): the first grid sample touched
    taps = base.unsqueeze(2) + torch.arange(-radius + 1, radius + 1, dtype=torch.float64)
    w = weight(src.unsqueeze(2) - taps)  # (C, W, T)
    w = w / w.sum(dim=2, keepdim=True)
    col = (taps.clamp(min=0).minimum(m.unsqueeze(2) - 1) - first.unsqueeze(2)).long()  # (C, W, T)
    cols = int(col.max()) + 1
    # normal equations, built from the taps (U is sparse): G = U^T U, B = lines @ U
    count = len(grids)
    pair = (col.unsqueeze(3) * cols + col.unsqueeze(2)).reshape(count, -1)
    gram = torch.zeros(count, cols * cols, dtype=torch.float64)
    gram.scatter_add_(1, pair, (w.unsqueeze(3) * w.unsqueeze(2)).reshape(count, -1))
    gram = gram.view(count, cols, cols)
    unused = gram.diagonal(dim1=1, dim2=2) == 0
    gram += torch.diag_embed(unused.double() + 1e-9)  # a grid sample no pixel reads: left at 0
    device = lines.device
    gram, col, w = gram.to(device, lines.dtype), col.to(device), w.to(device, lines.dtype)
    proj = torch.zeros(count, n_lines, cols, dtype=lines.dtype, device=device)
    for t in range(2 * radius):  # one tap at a time: (C, L, W) at most in memory
        index = col[:, :, t].unsqueeze(1).expand(count, n_lines, width)
        proj.scatter_add_(2, index, lines.unsqueeze(0) * w[:, :, t].unsqueeze(1))
    chol, failed = torch.linalg.cholesky_ex(gram)
    solved = torch.linalg.solve_triangular(chol, proj.transpose(1, 2), upper=False)
    kept = solved.square().sum(dim=(1, 2))
    residual = (lines.square().sum() - kept) / lines.numel()
    return residual.masked_fill(failed != 0, math.inf)  # a grid too ill-posed to fit
