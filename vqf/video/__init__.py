"""The video plane: probe, sampling plan, DALI graphs and the PyAV route (DESIGN.md 2-3).

These modules import only numpy at load time; torch, DALI and PyAV are imported by the
functions that need them, so `import vqf.video` stays light.
"""

from vqf.video.geometry import Letterbox
from vqf.video.plan import Clip, SamplingPlan, make_plan, segment_windows
from vqf.video.plane import Decoded, DetectFrames, Prepared, Roi, VideoPlane
from vqf.video.probe import VideoInfo, choose_route, describe, probe
from vqf.video.synth import make_audio, make_video

__all__ = [
    "Clip",
    "Decoded",
    "DetectFrames",
    "Letterbox",
    "Prepared",
    "Roi",
    "SamplingPlan",
    "VideoInfo",
    "VideoPlane",
    "choose_route",
    "describe",
    "make_audio",
    "make_plan",
    "make_video",
    "probe",
    "segment_windows",
]
