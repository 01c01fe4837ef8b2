"""Camera motion: static shot or moving camera, on the whole clip, each window and reversed windows.

Reversed windows catch reversed playback: a reversed static shot stays static, a reversed
camera move still moves, so disagreement between a window and its reverse is the signal.
"""

from __future__ import annotations

from vqf.filters.base import Filter, register


@register
class SimcamFilter(Filter):
    name = "simcam"
    labels = ("static", "camera_motion")
    reads = ("whole", "segment", "inverse")
    keys = {
        "whole": "simcam_filter",
        "segment": "seg_simcam_filter",
        "inverse": "inverse_seg_simcam_filter",
    }
    default_model = "backbone"
    head_kind = "attentive"
