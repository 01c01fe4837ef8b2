"""VFX: is the whole clip a visual-effects video rather than filmed footage."""

from __future__ import annotations

from vqf.filters.base import Filter, register


@register
class VfxFilter(Filter):
    name = "vfx"
    labels = ("VFX_video", "normal_video")
    reads = ("whole",)
    keys = {"whole": "vfx_filter"}
    default_model = "backbone"
    head_kind = "attentive"
