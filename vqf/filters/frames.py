"""Frame filters: weight-free measures on the frames the video plane already decoded.

A frame filter has no model (`model_name == ""`) and no head; the engine calls
`frame_info(decoded, sampling=recipe.sampling)` once per video. The measures run where the
frames are (torch ops on the rank's device) and only the final scalars go to the host.
"""

from __future__ import annotations

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


@dataclass(frozen=True, eq=False)
class FrameSet:
    """One video's decoded frames in display order, un-normalised, with their times.

    `rgb` is (U, 3, H, W) float32 in 0..1 and `luma` (U, H, W), both on the frames' device;
    `times` (U,) are presentation times in seconds; `whole` indexes the whole-video clip's
    frames and `segments` lists (index, start_s, end_s, frame indices) per window, all sorted.
    """

    rgb: torch.Tensor
    luma: torch.Tensor
    times: np.ndarray
    whole: np.ndarray
    segments: tuple[tuple[int, float, float, np.ndarray], ...]


class FrameFilter(Filter):
    """A weight-free filter on decoded frames. Subclasses set `name`, `keys` and `measure`."""

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
        """This filter's row keys for one decoded video (`vqf.video.plane.Decoded`)."""
        import torch

        with torch.inference_mode():
            frames = frame_set(decoded, sampling=sampling or SamplingConfig())
            return {self.keys["frames"]: self.measure(frames)}

    def measure(self, frames: FrameSet) -> dict[str, Any]:
        """The filter's object in the row's info."""
        raise NotImplementedError


def frame_set(decoded, *, sampling: SamplingConfig) -> FrameSet:
    """Undoes the graph's mean/std normalisation and gathers the plan's clip layout."""
    import torch

    frames = decoded.frames
    mean = torch.tensor(sampling.mean, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(sampling.std, device=frames.device).view(1, 3, 1, 1)
    rgb = (frames.float() * std + mean).clamp_(0.0, 1.0)
    plan = decoded.plan
    timestamps = np.asarray(decoded.info.timestamps, dtype=np.float64)
    times = timestamps[np.clip(plan.frames, 0, len(timestamps) - 1)]
    whole = np.unique(np.concatenate([c.take for c in plan.clips if c.kind == "whole"] or [[]]))
    segments = tuple(
        (c.index, float(c.start_s), float(c.end_s), np.unique(c.take))
        for c in plan.clips
        if c.kind == "segment"
    )
    if len(whole) == 0:  # a plan without a whole clip: every decoded frame stands in for it
        whole = np.arange(rgb.shape[0])
    return FrameSet(
        rgb=rgb, luma=luma(rgb), times=times, whole=whole.astype(np.int64), segments=segments
    )


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in 0..1 -> (N, H, W) luma in 0..1."""
    r, g, b = LUMA
    return rgb[:, 0] * r + rgb[:, 1] * g + rgb[:, 2] * b


def pick(values: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """`values[indices]` with host indices moved to the values' device."""
    import torch

    return values.index_select(0, torch.as_tensor(indices, device=values.device))


def to_host(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Several 0-d tensors to Python floats with one device-to-host copy."""
    import torch

    if not values:
        return {}
    stacked = torch.stack([v.float().reshape(()) for v in values.values()]).cpu().tolist()
    return dict(zip(values, stacked, strict=True))


def rounded(value: float, digits: int = 6) -> float:
    return round(float(value), digits)


def segment_map(frames: FrameSet, scores: list[float], key: str) -> dict[str, Any]:
    """The seed's segment layout: "0", "1", ... -> {"duration": [s, e], key: score}."""
    return {
        str(index): {"duration": [round(start, 3), round(end, 3)], key: rounded(score)}
        for (index, start, end, _), score in zip(frames.segments, scores, strict=True)
    }


def check_range(name: str, key: str, value: float, *, low: float = 0.0, high: float = 1.0) -> None:
    """Raises ConfigError when an option lies outside [low, high]."""
    if not low <= value <= high:
        raise ConfigError(
            f"filters.{name}.options.{key} = {value!r} is out of range",
            hint=f"use a number between {low:g} and {high:g}",
        )
