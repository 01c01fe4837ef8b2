"""Filters: every registered filter on tiny input, the row keys, the safe crop rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqf.config import FilterConfig, ModelConfig, Recipe, SamplingConfig
from vqf.errors import ConfigError
from vqf.filters import (
    FILTERS,
    ClipResult,
    DetectionFilter,
    build_filters,
    describe_filters,
    load_models,
)
from vqf.filters.safe_crop import safe_crop
from vqf.models.bank import ModelBank
from vqf.video.geometry import Letterbox
from vqf.video.plane import DetectFrames

SIZE, FRAMES, DETECT = 32, 8, 64
WINDOWS = [(0.0, 4.0), (3.0, 7.0), (6.0, 8.5)]


def tiny_recipe(**filters: FilterConfig) -> Recipe:
    return Recipe(
        sampling=SamplingConfig(
            height=SIZE, width=SIZE, whole_frames=FRAMES, window_frames=FRAMES, detect_size=DETECT
        ),
        models={
            "backbone": ModelConfig(init="random"),
            "rov_backbone": ModelConfig(init="random"),
            "detector": ModelConfig(kind="yolo", init="random"),
        },
        filters=filters or {name: FilterConfig() for name in FILTERS.names()},
    )


@pytest.fixture(scope="module")
def bank() -> ModelBank:
    return load_models(recipe=tiny_recipe(), device="cpu")


def check_result(obj: dict, labels: tuple[str, ...]) -> None:
    """A filter object: probabilities over the labels summing to 1, label = argmax."""
    assert set(obj) == {"result", "label", "prob"}
    probs = obj["result"]
    assert set(probs) == set(labels)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert obj["label"] == max(probs, key=probs.get) and obj["prob"] == probs[obj["label"]]


@pytest.mark.parametrize("name", FILTERS.names())
def test_every_filter_runs_on_tiny_input(name, bank):
    f = FILTERS.get(name)(spec=FilterConfig(), bank=bank)
    if "frames" in f.reads:
        pytest.skip("weight-free frame filter: it reads decoded frames, not model inputs")
    if isinstance(f, DetectionFilter):
        gen = torch.Generator().manual_seed(0)
        frames = torch.rand(2, 3, DETECT, DETECT, generator=gen)
        native = torch.randint(0, 256, (2, 54, 96, 3), generator=gen, dtype=torch.uint8)
        letterbox = Letterbox.fit(width=96, height=54, size=DETECT)
        detected = DetectFrames(
            frames=frames, indices=np.arange(2), letterbox=letterbox, native=native
        )
        result = f.detect_decoded([detected])[0]
        assert set(result.info) == set(f.keys.values())
        if hasattr(f, "detector"):
            for box in result.info[f.keys["detect"]]:
                assert box["class"] in f.detector.names and 0 <= box["conf"] <= 1
        assert result.crop is None or all(0 <= v <= 1 for v in result.crop)
        return
    gen = torch.Generator().manual_seed(1)
    results = []
    for kind in f.reads:
        spans = [(0.0, 8.5)] if kind == "whole" else WINDOWS
        clips = torch.randn(len(spans), FRAMES, 3, SIZE, SIZE, generator=gen)
        if kind == "inverse":
            clips = clips.flip(1)
        probs = f.probs(bank.backbone(f.model_name).encode(clips))
        assert probs.shape == (len(spans), len(f.labels))
        for i, ((start, end), p) in enumerate(zip(spans, f.as_dicts(probs), strict=True)):
            results.append(ClipResult(kind=kind, index=i, start_s=start, end_s=end, probs=p))
    info = f.to_info(results)
    assert set(info) == {f.keys[k] for k in f.reads}
    for kind in f.reads:
        if kind == "whole":
            check_result(info[f.keys[kind]], f.labels)
            continue
        segments = info[f.keys[kind]]
        assert list(segments) == ["0", "1", "2"]
        for key, (start, end) in zip(segments, WINDOWS, strict=True):
            assert segments[key]["duration"] == [start, end]
            check_result(segments[key][f.name], f.labels)


def test_segments_are_keyed_in_window_order(bank):
    f = FILTERS.get("low_quality")(spec=FilterConfig(), bank=bank)
    results = [
        ClipResult("segment", 1, 3.0, 7.0, {"low_quality": 0.9, "normal": 0.1}),
        ClipResult("segment", 0, 0.0, 4.0, {"low_quality": 0.2, "normal": 0.8}),
    ]
    segments = f.to_info(results)["seg_low_quality_filter"]
    assert list(segments) == ["0", "1"]
    assert segments["0"]["low_quality"]["label"] == "normal"
    assert segments["1"] == {
        "duration": [3.0, 7.0],
        "low_quality": {
            "result": {"low_quality": 0.9, "normal": 0.1},
            "label": "low_quality",
            "prob": 0.9,
        },
    }


def test_filters_of_the_seed_are_listed():
    listed = {d["name"]: d for d in describe_filters()}
    assert {n: d["model"] for n, d in listed.items()}.items() >= {
        "vfx": "backbone",
        "simcam": "backbone",
        "low_quality": "backbone",
        "rov": "rov_backbone",
        "abnormal_region": "detector",
    }.items()
    assert listed["simcam"]["reads"] == ["whole", "segment", "inverse"]
    assert listed["simcam"]["keys"] == [
        "simcam_filter",
        "seg_simcam_filter",
        "inverse_seg_simcam_filter",
    ]
    assert listed["vfx"]["labels"] == ["VFX_video", "normal_video"]
    assert listed["low_quality"]["keys"] == ["seg_low_quality_filter"]
    assert listed["rov"]["keys"] == ["rotate_vertical_filter"]
    assert listed["abnormal_region"]["options"]["conf"] == 0.25


def test_filter_options_are_checked(bank):
    cls = FILTERS.get("abnormal_region")
    with pytest.raises(ConfigError, match="unknown key filters.abnormal_region.options.bogus"):
        cls(spec=FilterConfig(options={"bogus": 1}), bank=bank)
    with pytest.raises(ConfigError, match="conf = 2.0 is out of range"):
        cls(spec=FilterConfig(options={"conf": 2}), bank=bank)
    with pytest.raises(ConfigError, match="the detector lacks"):
        cls(spec=FilterConfig(options={"classes": ["cat"]}), bank=bank)
    with pytest.raises(ConfigError, match="unknown key filters.vfx.options.x"):
        FILTERS.get("vfx")(spec=FilterConfig(options={"x": 1}), bank=bank)


def test_a_head_for_other_labels_is_refused(tmp_path):
    from vqf.models.checkpoints import init_random
    from vqf.models.heads import LinearHead, save_head

    fragment = init_random(tmp_path, size="tiny", filters=["low_quality"])
    head = save_head(LinearHead(dim=64, labels=("a", "b")), tmp_path / "other.safetensors")
    recipe = Recipe(
        sampling=tiny_recipe().sampling,
        models={"backbone": ModelConfig(path=fragment["models"]["backbone"]["path"])},
        filters={"low_quality": FilterConfig(head=str(head))},
    )
    with pytest.raises(ConfigError, match=r"labels \['a', 'b'\]"):
        load_models(recipe=recipe, device="cpu")


class FixedDetector:
    """Test double for `Detector`: returns fixed boxes in letterboxed pixels."""

    names = ("black_border", "watermark", "subtitle", "logo")

    def __init__(self, boxes):
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 6)

    def detect(self, frames, *, conf, iou, max_det):
        return [self.boxes[self.boxes[:, 4] >= conf][:max_det] for _ in range(frames.shape[0])]


def test_abnormal_regions_map_to_frame_pixels_and_a_safe_crop():
    # A 128x64 frame in a 64x64 input: scale 0.5, 32 rows of padding below.
    boxes = [
        [0, 0, 8, 32, 0.9, 0],  # black border on the left, full height
        [10, 24, 60, 30, 0.8, 2],  # subtitle near the bottom
        [30, 4, 34, 8, 0.1, 3],  # below the confidence threshold
        [20, 40, 40, 60, 0.7, 1],  # entirely in the padding: covers no picture
    ]
    bank = ModelBank(device=torch.device("cpu"), detectors={"detector": FixedDetector(boxes)})
    cls = FILTERS.get("abnormal_region")
    f = cls(spec=FilterConfig(), bank=bank)
    letterbox = Letterbox.fit(width=128, height=64, size=64)
    result = f.detect(torch.zeros(1, 3, 64, 64), letterbox=letterbox)
    found = result.info["abnormal_region_info"]
    assert [(b["class"], b["box"]) for b in found] == [
        ("black_border", [0.0, 0.0, 16.0, 64.0]),
        ("subtitle", [20.0, 48.0, 120.0, 60.0]),
    ]
    assert result.info["abnormal_region_crop"] == [16, 0, 128, 48]
    assert result.crop == (0.125, 0.0, 1.0, 0.75)
    # Only the classes the recipe names count as abnormal.
    only = cls(spec=FilterConfig(options={"classes": ["subtitle"]}), bank=bank)
    result = only.detect(torch.zeros(1, 3, 64, 64), letterbox=letterbox)
    assert result.info["abnormal_region_crop"] == [0, 0, 128, 48]


def test_safe_crop_rule():
    assert safe_crop([], width=1920, height=1080) is None
    border_and_subtitle = [(0, 0, 100, 1080), (400, 950, 1500, 1040)]
    assert safe_crop(border_and_subtitle, width=1920, height=1080) == (100, 0, 1920, 950)
    # A logo in the middle: any box-free rectangle loses over half the picture, so no crop.
    assert safe_crop([(900, 500, 1020, 580)], width=1920, height=1080, min_area=0.5) is None
    assert safe_crop([(900, 500, 1020, 580)], width=1920, height=1080, min_area=0.4) == (
        0,
        0,
        900,
        1080,
    )
    # Fractional box edges are rounded inwards.
    assert safe_crop([(0, 0, 10.2, 100)], width=100, height=100) == (11, 0, 100, 100)


def _largest_empty_area(boxes, width, height):
    """Brute force over every integer rectangle."""
    best = 0
    for x0 in range(width):
        for x1 in range(x0 + 1, width + 1):
            for y0 in range(height):
                for y1 in range(y0 + 1, height + 1):
                    if all(x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3] for b in boxes):
                        best = max(best, (x1 - x0) * (y1 - y0))
    return best


box_strategy = st.tuples(
    st.integers(0, 9), st.integers(0, 7), st.integers(1, 4), st.integers(1, 4)
).map(lambda t: (t[0], t[1], min(t[0] + t[2], 10), min(t[1] + t[3], 8)))


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(box_strategy, min_size=1, max_size=4))
def test_safe_crop_is_the_largest_box_free_rectangle(boxes):
    crop = safe_crop(boxes, width=10, height=8, min_area=0.0)
    best = _largest_empty_area(boxes, 10, 8)
    if best == 0:
        assert crop is None
        return
    x0, y0, x1, y1 = crop
    assert 0 <= x0 < x1 <= 10 and 0 <= y0 < y1 <= 8
    assert all(x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3] for b in boxes)
    assert (x1 - x0) * (y1 - y0) == best


def test_build_filters_follows_the_recipe(bank):
    recipe = tiny_recipe(vfx=FilterConfig(), rov=FilterConfig(enable=False))
    built = build_filters(recipe=recipe, bank=bank)
    assert list(built) == ["vfx"] and built["vfx"].model_name == "backbone"
    with pytest.raises(ConfigError, match="unknown filter 'nope'"):
        build_filters(recipe=tiny_recipe(nope=FilterConfig()), bank=bank)
