"""Bad inputs end as a VideoError of the right type, and the plane keeps serving good videos."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vqf.config import DecodeConfig, Recipe, SamplingConfig
from vqf.errors import ErrorType, Stage, VideoError
from vqf.video import Decoded, VideoPlane
from vqf.video.synth import make_audio

SAMPLING = SamplingConfig(height=32, width=32, whole_frames=6, window_frames=6, detect_size=64)


@pytest.fixture(scope="module")
def plane():
    plane = VideoPlane(
        recipe=Recipe(sampling=SAMPLING, decode=DecodeConfig(batch_size=3)), device="cpu"
    )
    yield plane
    plane.close()


def copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def truncated(video_factory, tmp_path):
    path = video_factory(codec="h264", seconds=2)
    data = path.read_bytes()
    out = tmp_path / "truncated.mp4"
    out.write_bytes(data[: len(data) // 2])  # the index (moov) is written last: it is gone
    return out


def unknown_codec(video_factory, tmp_path):
    data = video_factory(codec="h264", seconds=1).read_bytes()
    out = tmp_path / "unknown.mp4"
    out.write_bytes(data.replace(b"avc1", b"qqq1"))  # a sample entry no decoder claims
    return out


BAD = {
    "zero bytes": (lambda f, d: _write(d / "zero.mp4", b""), ErrorType.NOT_A_VIDEO, "empty"),
    "random bytes": (
        lambda f, d: _write(d / "random.mp4", np.random.default_rng(0).bytes(5000)),
        ErrorType.NOT_A_VIDEO,
        "not a video",
    ),
    "html named .mp4": (
        lambda f, d: _write(d / "page.mp4", b"<html><body>404 Not Found</body></html>\n" * 10),
        ErrorType.NOT_A_VIDEO,
        "text",
    ),
    "audio only": (
        lambda f, d: make_audio(d / "song.m4a", seconds=1),
        ErrorType.NOT_A_VIDEO,
        "audio only",
    ),
    "truncated": (truncated, ErrorType.CORRUPT_STREAM, "truncated"),
    "unknown codec": (unknown_codec, ErrorType.UNSUPPORTED_CODEC, "no decoder"),
    "missing": (lambda f, d: d / "nothing-here.mp4", ErrorType.NOT_FOUND, "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_the_plane_goes_on(plane, video_factory, tmp_path, case):
    make, error_type, words = BAD[case]
    bad = make(video_factory, tmp_path)
    with pytest.raises(VideoError) as caught:
        plane.prepare(bad, uri=str(bad))
    assert caught.value.type == error_type
    assert caught.value.stage == Stage.PROBE
    assert words in caught.value.message
    good = video_factory(codec="vp9", seconds=1)
    (decoded,) = plane.decode([plane.prepare(good, uri=str(good))])
    assert isinstance(decoded, Decoded) and decoded.frames.shape[1:] == (3, 32, 32)


def test_too_short_and_too_large_follow_the_recipe(video_factory):
    path = video_factory(codec="h264", seconds=1)
    strict = Recipe(
        sampling=SamplingConfig(min_duration_s=2.0), decode=DecodeConfig(max_pixels=100 * 100)
    )
    with pytest.raises(VideoError) as caught:
        VideoPlane(recipe=strict, device="cpu").prepare(path, uri="short")
    assert caught.value.type == ErrorType.TOO_SHORT and "2.0 s" in caught.value.message
    big = video_factory(codec="h264", width=160, height=120, seconds=1)
    with pytest.raises(VideoError) as caught:
        VideoPlane(recipe=Recipe(decode=DecodeConfig(max_pixels=100 * 100)), device="cpu").prepare(
            big, uri="big"
        )
    assert caught.value.type == ErrorType.TOO_LARGE and "160x120" in caught.value.message


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_a_video_that_breaks_in_the_graph_costs_no_other_video(
    plane, video_factory, tmp_path, codec
):
    paths = [
        copy(
            video_factory(codec=codec, seconds=2, seed=i),
            tmp_path / f"v{i}.{'webm' if codec == 'vp9' else 'mp4'}",
        )
        for i in range(3)
    ]
    prepared = [plane.prepare(p, uri=str(p)) for p in paths]
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])  # damaged after the probe accepted it
    rebuilds = plane.rebuilds
    results = plane.decode(prepared)
    assert isinstance(results[1], VideoError)
    assert results[1].type == ErrorType.DECODE_FAILED and results[1].stage == Stage.DECODE
    for i in (0, 2):
        assert isinstance(results[i], Decoded)
        assert results[i].frames.shape[0] == len(prepared[i].plan.frames)
    if codec == "vp9":  # DALI's decoder failed inside the graph: it was rebuilt
        assert plane.rebuilds > rebuilds
    (again,) = plane.decode([prepared[0]])
    assert isinstance(again, Decoded)


def test_detection_failure_is_a_detect_stage_error(plane, video_factory, tmp_path):
    path = copy(video_factory(codec="vp9", seconds=2), tmp_path / "d.webm")
    prepared = plane.prepare(path, uri=str(path))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(VideoError) as caught:
        plane.detect_frames(prepared)
    assert caught.value.type == ErrorType.DECODE_FAILED and caught.value.stage == Stage.DETECT
