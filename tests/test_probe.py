"""Probe: metadata of every kind of generated video, and the route verdicts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vqf.config import DecodeConfig, Recipe, SamplingConfig
from vqf.video.probe import choose_route, describe, nvdec_codecs, probe
from vqf.video.synth import frame_times

CODECS = ["h264", "hevc", "vp9", "mjpeg", "mpeg4"]


@pytest.mark.parametrize("vfr", [False, True], ids=["cfr", "vfr"])
@pytest.mark.parametrize("codec", CODECS)
def test_probe_reads_codec_size_and_timestamps(video_factory, codec, vfr):
    path = video_factory(codec=codec, width=64, height=48, seconds=2, fps=10, vfr=vfr)
    info = probe(path, device="cpu")
    assert (info.codec, info.width, info.height) == (codec, 64, 48)
    assert info.frame_count == 20
    # webm/mkv store milliseconds, mp4 the encoder's ticks
    expected = frame_times(20, fps=10, vfr=vfr, ticks=1000 if codec == "mpeg4" else 90000)
    np.testing.assert_allclose(info.timestamps, expected, atol=1.5e-3)
    assert info.vfr is vfr
    if not vfr:
        assert info.fps == pytest.approx(10, rel=1e-3)
        assert info.duration_s == pytest.approx(2.0, abs=2e-3)
    assert info.bit_depth == 8 and info.rotation == 0
    assert info.has_video and not info.has_audio
    assert info.route == ("dali-cpu" if codec in ("vp9", "mjpeg") else "pyav")


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_probe_reads_display_rotation(video_factory, codec):
    path = video_factory(codec=codec, width=64, height=48, seconds=1, rotation=90)
    info = probe(path, device="cpu")
    assert info.rotation == 90
    assert (info.width, info.height) == (48, 64)  # stored portrait
    assert (info.display_width, info.display_height) == (64, 48)


@pytest.mark.parametrize("seconds", [1, 3.9, 4, 20])
def test_probe_duration(video_factory, seconds):
    path = video_factory(codec="h264", width=32, height=24, seconds=seconds, fps=10)
    info = probe(path, device="cpu")
    assert info.frame_count == round(seconds * 10)
    assert info.duration_s == pytest.approx(seconds, abs=1e-3)


@pytest.mark.parametrize(("width", "height"), [(854, 480), (720, 1280)])
def test_probe_real_sizes(video_factory, width, height):
    path = video_factory(codec="h264", width=width, height=height, seconds=1, fps=3)
    info = probe(path, device="cpu")
    assert (info.width, info.height, info.frame_count) == (width, height, 3)


def test_probe_bit_depth_and_audio(video_factory):
    path = video_factory(codec="hevc", seconds=1, pix_fmt="yuv420p10le", audio=True)
    info = probe(path, device="cpu")
    assert info.bit_depth == 10 and info.pix_fmt.startswith("yuv420p10")
    assert info.has_audio
    assert info.route == "pyav"


def test_chroma_layouts_dali_cpu_decodes_stay_on_it(video_factory):
    path = video_factory(codec="mjpeg", seconds=1, pix_fmt="yuvj422p")
    info = probe(path, device="cpu")
    assert (info.pix_fmt, info.bit_depth, info.route) == ("yuvj422p", 8, "dali-cpu")


def test_requested_route_is_honoured_or_falls_back(video_factory):
    vp9 = probe(video_factory(codec="vp9", seconds=1), device="cpu")
    h264 = probe(video_factory(codec="h264", seconds=1), device="cpu")
    assert choose_route(vp9, requested="pyav", device="cpu") == ("pyav", "requested")
    assert choose_route(vp9, requested="dali-cpu", device="cpu") == ("dali-cpu", "requested")
    route, reason = choose_route(h264, requested="dali-cpu", device="cpu")
    assert route == "pyav" and reason.startswith("fallback")
    route, reason = choose_route(vp9, requested="nvdec", device="cpu")
    assert route == "dali-cpu" and "nvdec" in reason
    forced = probe(
        video_factory(codec="vp9", seconds=1), decode=DecodeConfig(route="pyav"), device="cpu"
    )
    assert forced.route == "pyav"


@pytest.mark.gpu
def test_gpu_routes_everything_nvdec_can_decode(video_factory):
    import torch

    major, _ = torch.cuda.get_device_capability(0)
    for codec in CODECS:  # a size inside every codec's NVDEC limits (HEVC needs 144x144)
        path = video_factory(codec=codec, width=256, height=192, seconds=1)
        info = probe(path, device="cuda:0")
        assert info.route == "nvdec", (codec, info.route_reason)
    assert major != 9 or "av1" not in nvdec_codecs("cuda:0")


def test_describe_shows_metadata_and_plan(video_factory):
    path = video_factory(codec="vp9", width=64, height=48, seconds=8, fps=5, rotation=90)
    recipe = Recipe(sampling=SamplingConfig(whole_frames=8, window_frames=6))
    text = describe(path, recipe=recipe, device="cpu")
    assert "vp9 48x64" in text and "rotation 90" in text and "displayed 64x48" in text
    assert "dali-cpu" in text
    # 8 s: windows [0,4] and [3,7]; the 1 s tail is not longer than tail_min_s
    assert text.count("segment") == 2 and text.count("inverse") == 2
    assert "[  3.000,   7.000]" in text


@pytest.mark.parametrize(
    ("codec", "width", "height", "route"),
    [
        ("hevc", 160, 120, "pyav"),  # under HEVC's 144x144 minimum
        ("hevc", 256, 192, "nvdec"),
        ("vp9", 160, 120, "dali-cpu"),  # under VP9's 128x128: DALI's CPU decoder takes it
        ("vp9", 128, 128, "nvdec"),
        ("h264", 4096, 2160, "nvdec"),
        ("h264", 4352, 2448, "pyav"),  # over H.264's 4096 maximum
        ("mpeg4", 2048, 1080, "pyav"),  # over MPEG-4 Part 2's 2032
    ],
)
def test_nvdec_is_chosen_by_its_documented_sizes(monkeypatch, codec, width, height, route):
    import dataclasses
    import importlib

    probe_module = importlib.import_module("vqf.video.probe")

    monkeypatch.setattr(probe_module, "nvdec_codecs", lambda device: probe_module.NVDEC_CODECS)
    info = probe_module.VideoInfo(
        path="x",
        container="matroska" if codec == "vp9" else "mov",
        codec=codec,
        width=width,
        height=height,
        frame_count=10,
        duration_s=1.0,
        fps=10.0,
        vfr=False,
        timestamps=np.arange(10) / 10,
        pix_fmt="yuv420p",
    )
    got, reason = choose_route(info, device="cuda:0")
    assert got == route, reason
    if route != "nvdec":  # a requested NVDEC says why it cannot
        _, why = choose_route(info, requested="nvdec", device="cuda:0")
        assert f"{width}x{height}" in why and codec in why
    avi = dataclasses.replace(info, container="avi")
    if codec == "mpeg4":  # AVI keeps decode-order timestamps: DALI cannot number its frames
        assert choose_route(avi, device="cuda:0")[0] == "pyav"


def test_describe_plans_the_dense_grid_only_for_a_filter_that_reads_it(video_factory):
    from vqf.config import build

    path = video_factory(codec="vp9", width=64, height=48, seconds=8, fps=10)
    sampling = {"whole_frames": 8, "window_frames": 6, "dense_fps": 5}
    without = {"sampling": sampling, "filters": {"cuts": {"enable": False}}}
    off = describe(path, recipe=build(Recipe, without, "r"), device="cpu")
    assert "dense grid  none (no enabled filter reads it)" in off
    with_cuts = {"sampling": sampling, "filters": {"cuts": {"enable": True}}}
    on = describe(path, recipe=build(Recipe, with_cuts, "r"), device="cpu")
    assert "dense grid  41 frames, at least 5 a second, for cuts" in on, on
    planned = [int(re.search(r"plan +(\d+) distinct", t).group(1)) for t in (off, on)]
    assert planned[0] < planned[1], planned


def test_probe_reads_the_stream_while_its_container_is_open(video_factory):
    """PyAV's stream points into the container's memory, which closing it frees. Under an
    allocator that hands freed memory straight back (jemalloc), a read after the close gets
    another object's bytes: the time base came back None and failed a valid video."""
    import glob
    import json
    import os
    import subprocess
    import sys

    libs = sorted(glob.glob("/usr/lib/*/libjemalloc.so.2"))
    if not libs:
        pytest.skip("libjemalloc2 is not installed (launch/test-deps.sh installs it)")
    path = video_factory(codec="h264", width=64, height=48, seconds=2, fps=10)
    code = (
        "import json, sys; from vqf.video.probe import probe; i = probe(sys.argv[1]); "
        "print(json.dumps([i.time_base, i.fps, i.duration_s, i.vfr, i.pix_fmt]))"
    )
    env = dict(os.environ, LD_PRELOAD=libs[0])
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    time_base, fps, duration, vfr, pix_fmt = json.loads(result.stdout.splitlines()[-1])
    expected = probe(path)
    assert (time_base, pix_fmt, vfr) == (expected.time_base, expected.pix_fmt, False)
    assert fps == pytest.approx(10.0, rel=0.01) and duration == pytest.approx(2.0, rel=0.01)
