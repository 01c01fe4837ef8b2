"""Frame filters: weight-free measures on the frames the decode stage streams past them.

A frame filter has no model (`model_name == ""`) and no head. It measures in two steps, so a
video of any length is judged in bounded memory: `features` turns each decoded chunk into a
few numbers per frame (torch ops on the frames' device, seeing the chunk and the frame before
it), and `summarise` turns every frame's numbers, moved to the host once per video, into the
filter's object in the row. `FrameMeasures` drives both for one video; `frame_info` runs them
on a whole `Decoded` at once (tools and tests).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vqf.config import SamplingConfig
from vqf.errors import ConfigError
from vqf.filters.base import ClipResult, Filter

if TYPE_CHECKING:
    import torch

# ITU-R BT.601 luma weights, the ones video codecs use for Y'.
LUMA = (0.299, 0.587, 0.114)
# `reads` of a frame filter that needs every part of the video at >= sampling.dense_fps
DENSE = ("frames", "dense")


@dataclass(frozen=True, eq=False)
class Pixels:
    """A chunk of decoded frames, un-normalised: `rgb` (n, 3, H, W) float32 in 0..1 and `luma`
    (n, H, W); `prev_*` hold the frame just before the chunk (None for a video's first chunk)."""

    rgb: torch.Tensor
    luma: torch.Tensor
    prev_rgb: torch.Tensor | None = None
    prev_luma: torch.Tensor | None = None

    def with_prev(self, which: str, each=None) -> torch.Tensor:
        """`rgb` or `luma` with the previous frame prepended (when there is one). `each`, a map
        that treats frames apart (a thumbnail), is applied to the chunk and to the previous
        frame before they are joined, so the full-size chunk is never copied."""
        import torch

        values, prev = getattr(self, which), getattr(self, f"prev_{which}")
        if each is not None:
            values = each(values)
            prev = None if prev is None else each(prev)
        return values if prev is None else torch.cat([prev, values])


@dataclass(frozen=True, eq=False)
class FrameLayout:
    """Where a video's decoded frames sit: `times` (U,) presentation seconds in decode order,
    `whole` the positions of the whole-video clip, `segments` (index, start_s, end_s,
    positions) per window, all sorted; `info` the probe's `VideoInfo` (container facts)."""

    times: np.ndarray
    whole: np.ndarray
    segments: tuple[tuple[int, float, float, np.ndarray], ...]
    info: Any = None


class FrameFilter(Filter):
    """A weight-free filter on decoded frames. Subclasses set `name` and `keys`, and define
    `features` (per chunk) and `summarise` (per video). It sees the plan's frames: the clips'
    and, when it sets `reads = DENSE` (or any enabled filter does), the dense grid too."""

    reads: ClassVar[tuple[str, ...]] = ("frames",)
    labels: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str] = ""
    head_kind: ClassVar[str] = ""

    def __init__(self, *, spec, bank=None):
        super().__init__(spec=spec, bank=bank)
        if self.model_name:
            raise ConfigError(
                f"filters.{self.name}.model = {self.model_name!r}, but {self.name} uses no model",
                hint=f"remove filters.{self.name}.model",
            )

    def probs(self, tokens: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.name} is a frame filter: call frame_info(), not probs()")

    def to_info(self, results: list[ClipResult]) -> dict[str, Any]:
        return {}

    def frame_info(self, decoded, *, sampling: SamplingConfig | None = None) -> dict[str, Any]:
        """This filter's row keys for one whole decoded video (`vqf.video.plane.Decoded`)."""
        measures = FrameMeasures([self], plan=decoded.plan, info=decoded.info, sampling=sampling)
        measures.add(decoded.frames)
        return measures.finish()

    def features(self, pixels: Pixels) -> dict[str, torch.Tensor]:
        """Per-frame numbers of one chunk: each value has one entry per frame of the chunk."""
        raise NotImplementedError

    def summarise(self, features: dict[str, np.ndarray], layout: FrameLayout) -> dict[str, Any]:
        """The filter's object in the row's info, from every frame's features."""
        raise NotImplementedError


class FrameMeasures:
    """The frame filters of one video, fed chunk by chunk in decode order."""

    def __init__(self, filters: list[FrameFilter], *, plan, info, sampling: SamplingConfig | None):
        self.filters = filters
        self.layout = layout_of(plan, info)
        sampling = sampling or SamplingConfig()
        self._mean, self._std = sampling.mean, sampling.std
        self._parts: list[dict[str, dict[str, torch.Tensor]]] = []
        self._prev: tuple | None = None
        self._scratch = Scratch.of_thread()

    def add(self, frames: torch.Tensor) -> None:
        """One chunk of model-ready frames (n, 3, H, W), normalised as the graph emits them."""
        import torch

        if not self.filters:
            return
        with torch.inference_mode():
            mean = torch.tensor(self._mean, device=frames.device).view(1, 3, 1, 1)
            std = torch.tensor(self._std, device=frames.device).view(1, 3, 1, 1)
            n, _, height, width = frames.shape
            rgb = torch.addcmul(mean, frames.float(), std, out=self._scratch.get("rgb", frames))
            rgb.clamp_(0.0, 1.0)
            y = luma(rgb, out=self._scratch.get("luma", frames, shape=(n, height, width)))
            prev_rgb, prev_luma = self._prev or (None, None)
            pixels = Pixels(rgb=rgb, luma=y, prev_rgb=prev_rgb, prev_luma=prev_luma)
            self._parts.append({f.name: f.features(pixels) for f in self.filters})
            self._prev = (rgb[-1:].clone(), y[-1:].clone())

    def finish(self) -> dict[str, Any]:
        """Every filter's row keys; the features reach the host in one copy."""
        import torch

        if not self.filters:
            return {}
        names = [(f.name, k) for f in self.filters for k in self._parts[0][f.name]]
        host = np.zeros((0, len(self.layout.times)))  # filters that read the container only
        if names:
            with torch.inference_mode():
                stacked = torch.stack(
                    [
                        torch.cat([p[f][k].float().reshape(-1) for p in self._parts])
                        for f, k in names
                    ]
                )
                host = stacked.cpu().numpy().astype(np.float64)
        info: dict[str, Any] = {}
        for f in self.filters:
            features = {k: host[i] for i, (name, k) in enumerate(names) if name == f.name}
            info[f.keys["frames"]] = f.summarise(features, self.layout)
        return info


def layout_of(plan, info) -> FrameLayout:
    """The plan's clip layout over its decoded frames."""
    timestamps = np.asarray(info.timestamps, dtype=np.float64)
    times = timestamps[np.clip(plan.frames, 0, len(timestamps) - 1)]
    whole = np.unique(np.concatenate([c.take for c in plan.clips if c.kind == "whole"] or [[]]))
    segments = tuple(
        (c.index, float(c.start_s), float(c.end_s), np.unique(c.take))
        for c in plan.clips
        if c.kind == "segment"
    )
    if len(whole) == 0:  # a plan without a whole clip: every decoded frame stands in for it
        whole = np.arange(len(plan.frames))
    return FrameLayout(times=times, whole=whole.astype(np.int64), segments=segments, info=info)


def luma(rgb: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, H, W) RGB in 0..1 -> (N, H, W) luma in 0..1 (into `out` when given)."""
    import torch

    r, g, b = LUMA
    y = torch.mul(rgb[:, 0], r, out=out)
    return y.add_(rgb[:, 1], alpha=g).add_(rgb[:, 2], alpha=b)


class Scratch:
    """Float32 buffers one video's chunks reuse, on the CPU only.

    A chunk's full-size temporaries are tens of MB: each would come from a fresh mapping (the
    rank caps glibc's mmap threshold so RSS stays flat, vqf/engine/memory.py) and be
    page-faulted in again, a cost in system time about as large as the arithmetic. The CUDA
    caching allocator already reuses its blocks, so on a GPU `get` gives None (a new tensor).
    Each thread has its own (`of_thread`): a decode lane keeps its buffers from one video to
    the next: one chunk of frames and its luma, in float32."""

    _local = threading.local()

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    @classmethod
    def of_thread(cls) -> Scratch:
        scratch = getattr(cls._local, "scratch", None)
        if scratch is None:
            scratch = cls._local.scratch = cls()
        return scratch

    def get(self, name: str, like: torch.Tensor, *, shape=None) -> torch.Tensor | None:
        import torch

        if like.device.type != "cpu":
            return None
        shape = tuple(like.shape if shape is None else shape)
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[name] = torch.empty(size, dtype=torch.float32)
        return buffer[:size].view(shape)


def rounded(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def segment_map(layout: FrameLayout, scores: list[float], key: str) -> dict[str, Any]:
    """The seed's segment layout: "0", "1", ... -> {"duration": [s, e], key: score}."""
    return {
        str(index): {"duration": [round(start, 3), round(end, 3)], key: rounded(score)}
        for (index, start, end, _), score in zip(layout.segments, scores, strict=True)
    }


def check_range(name: str, key: str, value: float, *, low: float = 0.0, high: float = 1.0) -> None:
    """Raises ConfigError when an option lies outside [low, high]."""
    if not low <= value <= high:
        raise ConfigError(
            f"filters.{name}.options.{key} = {value!r} is out of range",
            hint=f"use a number between {low:g} and {high:g}",
        )
