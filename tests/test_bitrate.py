"""Bitrate from the container: a heavily compressed copy of a clip scores far below its source."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tests.scenes import HEIGHT, WIDTH, Footage, Join, Shot

FPS = 25


def crushed_copy(source, path, *, crf: int):
    """Re-encodes every frame of `source` with libx264 at `crf` (51 is the coarsest)."""
    import av

    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, FPS)
        stream.options = {"preset": "veryfast", "crf": str(crf)}
        for i, frame in enumerate(src.decode(video=0)):
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """name -> (the bitrate row, the probe's VideoInfo) for a clip and two crushed copies."""
    from vqf.config import FilterConfig, Recipe, build
    from vqf.filters.bitrate import BitrateFilter
    from vqf.video.plane import VideoPlane

    folder = tmp_path_factory.mktemp("bitrate")
    footage = Footage((Shot("noise", 2, 1), Shot("subject", 2, 2)), (Join("cut"),), fps=FPS)
    source = footage.write(folder / "source.mp4")
    paths = {
        "source": source,
        "crf 40": crushed_copy(source, folder / "crf40.mp4", crf=40),
        "crf 51": crushed_copy(source, folder / "crf51.mp4", crf=51),
    }
    recipe = build(Recipe, {"sampling": {"height": 32, "width": 32}}, "recipe")
    plane = VideoPlane(recipe=recipe, device="cpu")
    # tiny frames cost container overhead per pixel: the mark sits higher than at 1080p
    bitrate = BitrateFilter(spec=FilterConfig(options={"bpp_min": 0.1}))
    out = {}
    for name, path in paths.items():
        (decoded,) = plane.decode([plane.prepare(path, uri=str(path))])
        out[name] = (bitrate.frame_info(decoded, sampling=recipe.sampling)["bitrate"], decoded.info)
    return out


def test_a_crushed_copy_scores_far_below_its_source(measured):
    source, crushed = measured["source"][0], measured["crf 51"][0]
    assert crushed["bits_per_pixel"] < 0.1 * source["bits_per_pixel"], (source, crushed)
    assert crushed["kbps"] < 0.1 * source["kbps"]  # about 10 kbps against about 240
    assert source["low"] is False and crushed["low"] is True
    # the copy at crf 40 lies in between
    assert crushed["kbps"] < measured["crf 40"][0]["kbps"] < source["kbps"]


def test_the_numbers_follow_from_the_container(measured):
    row, info = measured["source"]
    bits = 8 * info.size_bytes
    assert row["kbps"] == pytest.approx(bits / info.duration_s / 1000, abs=0.1)
    per_pixel = bits / (info.width * info.height * info.frame_count)
    assert row["bits_per_pixel"] == pytest.approx(per_pixel, rel=1e-3)
    print(
        "\n"
        + "\n".join(
            f"{name:7} {r['kbps']:8.1f} kbps {r['bits_per_pixel']:.4f} bpp low={r['low']}"
            for name, (r, _) in measured.items()
        )
    )


def test_bad_bpp_min_is_a_config_error():
    from vqf.config import FilterConfig
    from vqf.errors import ConfigError
    from vqf.filters.bitrate import BitrateFilter

    with pytest.raises(ConfigError, match="bpp_min"):
        BitrateFilter(spec=FilterConfig(options={"bpp_min": -1.0}))
    assert np.isclose(BitrateFilter(spec=FilterConfig()).options.bpp_min, 0.02)
