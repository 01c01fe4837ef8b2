"""What a filter needs loaded, as plain data: the model bank reads these, never filter classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelNeed:
    """Filter `filter` reads model `model` (a V-JEPA 2 backbone or a YOLO detector) and, when
    `head_kind` is set, needs a head of that kind over `labels` (`head_path`: its file, or
    "random"); a fresh attentive head gets `head_blocks` self-attention blocks."""

    filter: str
    model: str
    kind: Literal["vjepa2", "yolo"]
    labels: tuple[str, ...]
    head_kind: str = ""
    head_blocks: int = 0
    head_path: str = ""
