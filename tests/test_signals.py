"""Weight-free filters on generated videos made to show each defect, and on a normal one.

Each video goes through the real video plane (probe, plan, detection frames, decode); the
borders filter's crop steers the main decode as the engine does it. Measures run per device.
"""

from __future__ import annotations

import dataclasses

import pytest

from vqf.config import FilterConfig, Recipe, build
from vqf.errors import ConfigError
from vqf.filters import borders, cuts, exposure, motion, sharpness
from vqf.filters.base import FILTERS, describe

SAMPLING = {
    "whole_frames": 16,
    "window_frames": 8,
    "height": 64,
    "width": 64,
    "detect_frames": 2,
    "detect_size": 320,
}
SECONDS = {"cuts": 3.0}
FRAME_FILTERS = (
    motion.MotionFilter,
    exposure.ExposureFilter,
    cuts.CutsFilter,
)


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return build(Recipe, {"sampling": SAMPLING, "decode": {"batch_size": 1}}, "recipe")


@pytest.fixture(scope="module")
def judged(tmp_path_factory, recipe):
    """defect -> (borders result, decoded video with the borders crop, decoded without,
    detection frames)."""
    from vqf.ops.samples import DEFECTS, make_sample
    from vqf.video import Roi
    from vqf.video.plane import VideoPlane

    folder = tmp_path_factory.mktemp("defects")
    plane = VideoPlane(recipe=recipe, device="cpu")
    found = borders.BordersFilter(spec=FilterConfig())
    out = {}
    for i, defect in enumerate(DEFECTS):
        path = make_sample(
            folder / f"{defect}.mp4", defect=defect, seconds=SECONDS.get(defect, 2.0), seed=i
        )
        prepared = plane.prepare(path, uri=str(path))
        det = plane.detect_frames(prepared)
        result = found.detect(
            det.frames,
            letterbox=det.letterbox,
        )
        roi = Roi(*result.crop) if result.crop else None
        cropped, whole = plane.decode([prepared, prepared], rois=[roi, None])
        out[defect] = (result, cropped, whole, det)
    plane.close()
    return out


def measure(judged, recipe, defect: str, device: str) -> dict:
    """Every frame filter's info for `defect`, computed on `device`."""
    decoded = judged[defect][1]
    moved = dataclasses.replace(decoded, frames=decoded.frames.to(device), _takes={})
    info = {}
    for cls in FRAME_FILTERS:
        info.update(cls(spec=FilterConfig()).frame_info(moved, sampling=recipe.sampling))
    return info


def top_row_luma(decoded, recipe) -> float:
    import torch

    from vqf.filters.frames import luma

    mean = torch.tensor(recipe.sampling.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.sampling.std).view(1, 3, 1, 1)
    rgb = (decoded.frames.float().cpu() * std + mean).clamp(0, 1)
    return float(luma(rgb)[:, 0, :].mean())


def test_borders_measure_the_letterbox_bars_and_crop_them_away(judged, recipe):
    result, cropped, whole, _ = judged["letterboxed"]
    bars = result.info["borders"]
    assert abs(bars["top"] - 20) <= 3 and abs(bars["bottom"] - 20) <= 3, bars  # 20 px of 120
    assert bars["left"] == 0 and bars["right"] == 0
    assert bars["colour"] == "black" and 0.28 < bars["share"] < 0.38
    x0, y0, x1, y1 = bars["crop"]
    assert (x0, x1) == (0, 160) and 20 <= y0 <= 24 and 96 <= y1 <= 100
    assert result.crop == pytest.approx((x0 / 160, y0 / 120, x1 / 160, y1 / 120), abs=0.01)
    # the crop steers the main decode: the clip's first row is picture, not the black bar
    assert top_row_luma(whole, recipe) < 0.05
    assert top_row_luma(cropped, recipe) > 0.15


@pytest.mark.parametrize("defect", ["normal", "still", "blurred", "dark", "cuts"])
def test_borders_find_no_bars_where_there_are_none(judged, defect):
    result = judged[defect][0]
    bars = result.info["borders"]
    assert result.crop is None and bars["crop"] is None
    assert [bars[s] for s in borders.SIDES] == [0, 0, 0, 0] and bars["share"] == 0.0


def test_borders_call_a_flat_frame_blank(tmp_path, recipe):
    import numpy as np

    from vqf.ops.samples import write_h264
    from vqf.video.plane import VideoPlane

    grey = (np.full((120, 160, 3), 90, np.uint8) for _ in range(12))
    path = write_h264(tmp_path / "grey.mp4", grey, width=160, height=120, fps=12)
    plane = VideoPlane(recipe=recipe, device="cpu")
    prepared = plane.prepare(path, uri=str(path))
    det = plane.detect_frames(prepared)
    result = borders.BordersFilter(spec=FilterConfig()).detect(det.frames, letterbox=det.letterbox)
    assert result.info["borders"]["blank"] is True and result.crop is None


def test_motion_calls_a_still_image_static(judged, recipe, device):
    still = measure(judged, recipe, "still", device)["motion"]
    moving = measure(judged, recipe, "normal", device)["motion"]
    assert still["static"] is True and still["frozen_ratio"] > 0.9 and still["score"] < 0.004
    assert moving["static"] is False and moving["frozen_ratio"] == 0.0 and moving["score"] > 0.02
    assert set(moving["segments"]) == {"0"}
    assert moving["segments"]["0"]["duration"] == [0.0, 2.0]
    assert moving["segments"]["0"]["score"] > 0.02


def test_sharpness_drops_with_blur_not_with_darkness(judged, device):
    def scored(defect):
        det = judged[defect][3]
        moved = dataclasses.replace(det, native=det.native.to(device))
        return sharpness.SharpnessFilter(spec=FilterConfig()).detect_decoded([moved])[0]

    scores = {d: scored(d).info["sharpness"] for d in ("normal", "blurred", "dark")}
    assert scores["blurred"]["blurry"] is True and scores["blurred"]["score"] < 0.6
    assert scores["normal"]["blurry"] is False and scores["normal"]["score"] > 0.6
    assert scores["dark"]["blurry"] is False  # contrast-free: a dark picture is not a soft one
    # spatial information (P.910) falls with contrast as well as with blur
    assert scores["dark"]["si"] < scores["normal"]["si"] / 3, scores
    assert scored("normal").crop is None


def test_exposure_tells_a_dark_video(judged, recipe, device):
    dark = measure(judged, recipe, "dark", device)["exposure"]
    normal = measure(judged, recipe, "normal", device)["exposure"]
    assert dark["mean_luma"] < 0.1 and dark["dark_share"] > 0.8
    assert normal["mean_luma"] > 0.3 and normal["dark_share"] < 0.2
    assert 0.0 <= normal["bright_share"] < 0.2


def test_cuts_finds_both_cuts_and_when(judged, recipe, device):
    found = measure(judged, recipe, "cuts", device)["cuts"]
    assert found["count"] == 2 and found["kinds"] == ["cut", "cut"]
    assert found["segments"]["0"] == {"duration": [0.0, 3.0], "count": 2}
    assert found["times"][0] == pytest.approx(1.0, abs=0.25)
    assert found["times"][1] == pytest.approx(2.0, abs=0.25)
    for defect in ("normal", "still", "blurred", "dark", "letterboxed"):
        assert measure(judged, recipe, defect, device)["cuts"]["count"] == 0, defect


def test_weight_free_filters_are_registered_without_models():
    for name in ("borders", "motion", "sharpness", "exposure", "cuts", "bitrate"):
        cls = FILTERS.get(name)
        assert cls.default_model == "" and describe(cls)["head"] == "-"
        assert cls.__module__ == f"vqf.filters.{name}"
        assert cls(spec=FilterConfig()).model_name == ""
    assert "detect" in borders.BordersFilter.reads  # the engine runs it before the main decode
    assert "detect" in sharpness.SharpnessFilter.reads  # it reads the frames as decoded


def test_bad_options_and_models_are_config_errors():
    with pytest.raises(ConfigError, match="static_max"):
        motion.MotionFilter(spec=FilterConfig(options={"static_max": 2.0}))
    with pytest.raises(ConfigError, match="unknown key"):
        cuts.CutsFilter(spec=FilterConfig(options={"treshold": 0.4}))
    with pytest.raises(ConfigError, match="uses no model"):
        sharpness.SharpnessFilter(spec=FilterConfig(model="backbone"))
    with pytest.raises(ConfigError, match="dark_level"):
        exposure.ExposureFilter(spec=FilterConfig(options={"dark_level": 0.9, "bright_level": 0.5}))
