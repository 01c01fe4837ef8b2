"""Rotated or vertical screen: a phone filmed sideways, a portrait video pillarboxed, and so on.

It has its own backbone by default: orientation cues want features the shared one discards.
"""

from __future__ import annotations

from vqf.filters.base import Filter, register


@register
class RovFilter(Filter):
    name = "rov"
    labels = ("normal", "rotated", "vertical")
    reads = ("whole",)
    keys = {"whole": "rotate_vertical_filter"}
    default_model = "rov_backbone"
    head_kind = "linear"
