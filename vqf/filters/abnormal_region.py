"""Abnormal regions: YOLO boxes (black borders, watermarks, subtitles, logos) and the safe crop.

Row keys: `abnormal_region_info` lists every kept box in displayed-frame pixels (rotation applied) as
`{"frame", "box": [x0, y0, x1, y1], "class", "conf"}` (highest confidence first), and
`abnormal_region_crop` is the safe crop `[x0, y0, x1, y1]` in pixels or None for the whole
frame (the rule is in vqf/filters/safe_crop.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError
from vqf.filters.base import DetectionFilter, DetectResult, register
from vqf.filters.safe_crop import safe_crop

if TYPE_CHECKING:
    import torch

    from vqf.video.geometry import Letterbox


@dataclass(frozen=True)
class AbnormalRegionOptions:
    conf: float = 0.25  # boxes below this confidence are dropped
    iou: float = 0.7  # NMS overlap threshold
    classes: tuple[str, ...] = ()  # detector classes that count as abnormal; empty: all
    min_crop_area: float = 0.5  # a safe crop keeping less of the frame is not applied
    max_boxes: int = 32  # per video, after NMS on each frame

    def __post_init__(self):
        for key in ("conf", "iou", "min_crop_area"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"filters.abnormal_region.options.{key} = {value!r} is out of range",
                    hint="use a number between 0 and 1",
                )
        if self.max_boxes < 1:
            raise ConfigError(f"filters.abnormal_region.options.max_boxes = {self.max_boxes} < 1")


@register
class AbnormalRegionFilter(DetectionFilter):
    name = "abnormal_region"
    labels = ("black_border", "watermark", "subtitle", "logo")
    keys = {"detect": "abnormal_region_info", "crop": "abnormal_region_crop"}
    Options = AbnormalRegionOptions

    def __init__(self, *, spec, bank):
        super().__init__(spec=spec, bank=bank)
        self.detector = bank.detector(self.model_name)
        unknown = sorted(set(self.options.classes) - set(self.detector.names))
        if unknown:
            raise ConfigError(
                f"filters.abnormal_region.options.classes names {unknown} the detector lacks",
                hint=f"detector classes: {', '.join(self.detector.names)}",
            )

    def detect(self, frames: torch.Tensor, *, letterbox: Letterbox) -> DetectResult:
        return self.detect_many([(frames, letterbox)])[0]

    def detect_many(self, videos: list[tuple[torch.Tensor, Letterbox]]) -> list[DetectResult]:
        """All videos' detection frames through the detector in one call."""
        import torch

        opts = self.options
        frames = torch.cat([f for f, _ in videos]) if len(videos) > 1 else videos[0][0]
        per_frame = self.detector.detect(
            frames, conf=opts.conf, iou=opts.iou, max_det=opts.max_boxes
        )
        results, first = [], 0
        for video_frames, letterbox in videos:
            count = int(video_frames.shape[0])
            results.append(self._result(per_frame[first : first + count], letterbox))
            first += count
        return results

    def _result(self, per_frame, letterbox: Letterbox) -> DetectResult:
        opts = self.options
        boxes = []
        for frame, found in enumerate(per_frame):
            for x0, y0, x1, y1, conf, cls in found.tolist():
                name = self.detector.names[int(cls)]
                if opts.classes and name not in opts.classes:
                    continue
                box = letterbox.to_frame((x0, y0, x1, y1))
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    continue  # all padding: nothing of the picture is covered
                boxes.append(_box_info(frame, box, name, conf))
        boxes.sort(key=lambda b: -b["conf"])
        boxes = boxes[: opts.max_boxes]
        width, height = letterbox.width, letterbox.height
        crop = safe_crop(
            [b["box"] for b in boxes], width=width, height=height, min_area=opts.min_crop_area
        )
        info: dict[str, Any] = {
            self.keys["detect"]: boxes,
            self.keys["crop"]: list(crop) if crop else None,
        }
        return DetectResult(info=info, crop=letterbox.relative(crop) if crop else None)


def _box_info(frame: int, box, name: str, conf: float) -> dict[str, Any]:
    return {
        "frame": frame,
        "box": [round(v, 1) for v in box],
        "class": name,
        "conf": round(float(conf), 4),
    }
