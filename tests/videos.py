"""Generated test videos: a session-wide factory that encodes each distinct request once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

SUFFIX = {"h264": "mp4", "hevc": "mp4", "mpeg4": "mp4", "vp9": "webm", "mjpeg": "mkv"}


@pytest.fixture(scope="session")
def video_factory(tmp_path_factory):
    """`video_factory(codec="vp9", seconds=2, ..., suffix="webm") -> Path`, cached by arguments.

    Takes `vqf.video.synth.make_video`'s keywords; `suffix` picks the container (default: mp4,
    webm for VP9, mkv for MJPEG). Callers must not modify the returned file: copy it first.
    """
    from vqf.video.synth import make_video

    root = tmp_path_factory.mktemp("videos")
    cache: dict[str, Path] = {}

    def make(**kwargs) -> Path:
        suffix = kwargs.pop("suffix", None) or SUFFIX[kwargs.get("codec", "h264")]
        key = repr((suffix, sorted(kwargs.items())))
        if key not in cache:
            name = hashlib.sha1(key.encode()).hexdigest()[:12]
            cache[key] = make_video(root / f"{name}.{suffix}", **kwargs)
        return cache[key]

    return make
