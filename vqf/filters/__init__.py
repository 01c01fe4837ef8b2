"""Filters, one small file each, registered by name in FILTERS.

Importing this package loads no torch: filter classes only describe themselves until a
`ModelBank` gives them heads and detectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The explicit list of built-in filters; importing a module registers its filter.
from vqf.filters import (  # noqa: F401  # noqa: F401
    abnormal_region,
    bitrate,
    borders,
    camera,
    cuts,
    exposure,
    low_quality,
    motion,
    rov,
    sharpness,
    simcam,
    vfx,
)
from vqf.filters.base import (
    CLIP_KINDS,
    FILTERS,
    ClipResult,
    DetectionFilter,
    DetectResult,
    Filter,
    describe,
    register,
)

if TYPE_CHECKING:
    from vqf.config import Recipe
    from vqf.models.bank import ModelBank

__all__ = [
    "CLIP_KINDS",
    "FILTERS",
    "ClipResult",
    "DetectResult",
    "DetectionFilter",
    "Filter",
    "build_filters",
    "dense_fps",
    "describe_filters",
    "enabled_filters",
    "load_models",
    "model_needs",
    "register",
]


def describe_filters() -> list[dict[str, Any]]:
    """Every registered filter: name, labels, clips it reads, default model, head, row keys."""
    return [describe(cls) for _, cls in FILTERS.items()]


def enabled_filters(recipe: Recipe) -> dict[str, type[Filter]]:
    """The recipe's enabled filters by name, in recipe order; an unknown name raises ConfigError."""
    return {name: FILTERS.get(name) for name, spec in recipe.filters.items() if spec.enable}


def model_needs(recipe: Recipe) -> list:
    """What the recipe's enabled filters need loaded (`vqf.models.needs.ModelNeed`), in order."""
    needs = (cls.needs(name, recipe.filters[name]) for name, cls in enabled_filters(recipe).items())
    return [n for n in needs if n is not None]


def dense_readers(recipe: Recipe) -> list[str]:
    """The enabled filters that read the dense grid ("dense" in their `reads`)."""
    return [name for name, cls in enabled_filters(recipe).items() if "dense" in cls.reads]


def dense_fps(recipe: Recipe) -> float:
    """The dense grid the recipe's plans need: `sampling.dense_fps` when an enabled filter
    reads it (`dense_readers`), else 0, so no frame is decoded for nobody."""
    return float(recipe.sampling.dense_fps) if dense_readers(recipe) else 0.0


def load_models(*, recipe: Recipe, device, resolve=None, cache_dir=None) -> ModelBank:
    """The model bank of what the recipe's enabled filters need."""
    from vqf.models.bank import ModelBank

    return ModelBank.load(
        recipe=recipe,
        needs=model_needs(recipe),
        device=device,
        resolve=resolve,
        cache_dir=cache_dir,
    )


def build_filters(*, recipe: Recipe, bank: ModelBank) -> dict[str, Filter]:
    """Instances of the recipe's enabled filters, wired to the bank's heads and detectors."""
    return {
        name: cls(spec=recipe.filters[name], bank=bank)
        for name, cls in enabled_filters(recipe).items()
    }
