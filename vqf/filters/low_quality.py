"""Low quality: blur, heavy compression, noise, judged per window."""

from __future__ import annotations

from vqf.filters.base import Filter, register


@register
class LowQualityFilter(Filter):
    name = "low_quality"
    labels = ("low_quality", "normal")
    reads = ("segment",)
    keys = {"segment": "seg_low_quality_filter"}
    default_model = "backbone"
    head_kind = "linear"
