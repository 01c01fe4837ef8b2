"""What every filter is: a registered class naming its labels, the clips it reads, its model.

A filter scores; it does not decode or batch. The engine groups filters by `model_name`,
encodes each clip once per backbone, hands the tokens to every filter on that backbone
(`probs`), collects one `ClipResult` per clip and asks the filter for its row keys (`to_info`).
Detection filters instead get a few letterboxed frames (`detect`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from vqf.config import FilterConfig, build
from vqf.registry import Registry
from vqf.schema import filter_result

if TYPE_CHECKING:
    import torch

    from vqf.models.bank import ModelBank
    from vqf.video.geometry import Letterbox
    from vqf.video.plane import DetectFrames

CLIP_KINDS = ("whole", "segment", "inverse")


@dataclass(frozen=True)
class NoOptions:
    """A filter without options of its own."""


@dataclass(frozen=True)
class ClipResult:
    """One clip's probabilities: `kind` is whole / segment / inverse, `index` its window."""

    kind: str
    index: int
    start_s: float
    end_s: float
    probs: dict[str, float]


@dataclass(frozen=True)
class DetectResult:
    """A detection filter's row keys, and the safe crop (x0, y0, x1, y1 relative) or None."""

    info: dict[str, Any]
    crop: tuple[float, float, float, float] | None


class Filter:
    """A scoring filter on backbone tokens. Subclasses set the class attributes only."""

    name: ClassVar[str]
    labels: ClassVar[tuple[str, ...]]
    # what it reads: clip kinds ("whole", "segment", "inverse"), "detect" frames, decoded
    # "frames", and "dense" when it needs the dense grid (sampling.dense_fps) among them: the
    # plan carries that grid only when an enabled filter says so (`vqf.filters.dense_fps`)
    reads: ClassVar[tuple[str, ...]]
    keys: ClassVar[dict[str, str]]  # clip kind -> the info key its results go under
    default_model: ClassVar[str] = "backbone"
    head_kind: ClassVar[str] = "linear"
    head_blocks: ClassVar[int] = 0  # self-attention blocks of a fresh attentive head
    Options: ClassVar[type] = NoOptions

    def __init__(self, *, spec: FilterConfig, bank: ModelBank):
        self.spec = spec
        self.options = build(self.Options, spec.options, f"filters.{self.name}.options")
        self.model_name = spec.model or self.default_model
        self.head = bank.head(self.name) if self.head_kind else None

    model_kind: ClassVar[str] = "vjepa2"

    @classmethod
    def needs(cls, name: str, spec: FilterConfig):
        """The model (and head) this filter reads, as `vqf.models.needs.ModelNeed`; None for a
        weight-free filter. The model bank loads what the enabled filters declare here."""
        from vqf.models.needs import ModelNeed

        model = spec.model or cls.default_model
        if not model:
            return None
        return ModelNeed(
            filter=name,
            model=model,
            kind=cls.model_kind,
            labels=tuple(cls.labels),
            head_kind=cls.head_kind,
            head_blocks=cls.head_blocks,
            head_path=spec.head,
        )

    def probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, D) tokens -> (N, len(labels)) float32 probabilities, columns in `labels` order."""
        import torch

        with torch.inference_mode():
            return self.head(tokens)

    def as_dicts(self, probs: torch.Tensor) -> list[dict[str, float]]:
        """Rows of `probs` as {label: prob} dicts, for `ClipResult.probs`."""
        return [
            dict(zip(self.labels, map(float, row), strict=True))
            for row in probs.float().cpu().tolist()
        ]

    def to_info(self, results: list[ClipResult]) -> dict[str, Any]:
        """This filter's keys in the row's info; a segment kind maps "0", "1", ... to windows."""
        info: dict[str, Any] = {}
        for kind in self.reads:
            mine = sorted((r for r in results if r.kind == kind), key=lambda r: r.index)
            if kind == "whole":
                if mine:
                    info[self.keys[kind]] = filter_result(mine[0].probs)
                continue
            info[self.keys[kind]] = {
                str(r.index): {
                    "duration": [round(r.start_s, 3), round(r.end_s, 3)],
                    self.name: filter_result(r.probs),
                }
                for r in mine
            }
        return info


class DetectionFilter(Filter):
    """A filter on a few letterboxed frames through a detector; its output steers the crop."""

    reads: ClassVar[tuple[str, ...]] = ("detect",)
    default_model: ClassVar[str] = "detector"
    model_kind: ClassVar[str] = "yolo"
    head_kind: ClassVar[str] = ""

    def probs(self, tokens: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.name} is a detection filter: call detect(), not probs()")

    def to_info(self, results: list[ClipResult]) -> dict[str, Any]:
        """Detection filters put their keys in `DetectResult.info`; clips add nothing."""
        return {}

    def detect(self, frames: torch.Tensor, *, letterbox: Letterbox) -> DetectResult:
        """(D, 3, S, S) letterboxed frames of one video -> row keys and crop (displayed frame)."""
        raise NotImplementedError

    def detect_many(self, videos: list[tuple[torch.Tensor, Letterbox]]) -> list[DetectResult]:
        """`detect` for several videos; a filter with a model overrides it to make one call."""
        return [self.detect(frames, letterbox=letterbox) for frames, letterbox in videos]

    def detect_decoded(self, videos: list[DetectFrames]) -> list[DetectResult]:
        """What the detect stage calls with each video's `vqf.video.plane.DetectFrames`; a filter
        that measures the frames as decoded (`DetectFrames.native`) overrides it."""
        return self.detect_many([(v.frames, v.letterbox) for v in videos])


FILTERS: Registry[type[Filter]] = Registry("filter")


def register(cls: type[Filter]) -> type[Filter]:
    """Class decorator: puts a filter in FILTERS under its `name`."""
    return FILTERS.register(cls.name)(cls)


def describe(cls: type[Filter]) -> dict[str, Any]:
    """What `vqf list filters` shows for one filter."""
    return {
        "name": cls.name,
        "labels": list(cls.labels),
        "reads": list(cls.reads),
        "model": cls.default_model,
        "head": cls.head_kind or "-",
        "keys": list(cls.keys.values()),
        "options": {f.name: f.default for f in dataclasses.fields(cls.Options)},
    }
