"""Sampling plan: the seed's windows, exact clip sizes, one decode of the union."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqf.config import SamplingConfig
from vqf.errors import ConfigError
from vqf.video.plan import make_plan, segment_windows


def cfr(seconds: float, fps: float) -> np.ndarray:
    return np.arange(round(seconds * fps)) / fps


@pytest.mark.parametrize(
    ("duration", "windows"),
    [
        (20.0, [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19)]),  # 1 s tail: not > 1 s
        (8.5, [(0, 4), (3, 7), (4.5, 8.5)]),  # 1.5 s tail: end-aligned window
        (7.0, [(0, 4), (3, 7)]),
        (4.0, [(0, 4)]),
        (3.9, [(0, 3.9)]),  # shorter than a window: one window over all of it
        (1.0, [(0, 1)]),
    ],
)
def test_seed_windows(duration, windows):
    got = segment_windows(duration, window_s=4, stride_s=3, tail_min_s=1)
    np.testing.assert_allclose(np.array(got), np.array(windows, dtype=float), atol=1e-6)


def test_default_plan_of_a_20s_video_decodes_each_frame_once():
    plan = make_plan(cfr(20, 30), sampling=SamplingConfig())
    kinds = [c.kind for c in plan.clips]
    assert kinds.count("whole") == 1 and kinds.count("segment") == 6 == kinds.count("inverse")
    assert all(len(c.take) == 48 for c in plan.clips)
    # 13 clips x 48 frames are read; overlap and reversal cost no extra decode
    assert plan.frames_needed == 13 * 48
    assert len(plan.frames) < plan.frames_needed
    assert len(plan.frames) == len(np.unique(plan.frames))


def test_dense_grid_joins_the_union_without_changing_any_clip():
    ts = cfr(20, 30)
    off = make_plan(ts, sampling=SamplingConfig(dense_fps=0))
    plan = make_plan(ts, sampling=SamplingConfig(dense_fps=8))
    assert len(off.dense) == 0 and len(plan.dense) == 201  # every third frame: 10 a second
    assert len(plan.frames) > len(off.frames)
    for before, after in zip(off.clips, plan.clips, strict=True):
        assert np.array_equal(off.frame_indices(before), plan.frame_indices(after))
    assert np.array_equal(off.detect_frames, plan.detect_frames)
    gaps = np.diff(ts[plan.frames])
    assert gaps.max() <= 1 / 8 + 1e-9, "no stretch of the video goes unseen for over 1/8 s"
    assert plan.frames[plan.dense].tolist() == sorted(set(plan.frames[plan.dense].tolist()))


def test_dense_grid_takes_every_frame_of_a_slow_video():
    plan = make_plan(cfr(3, 5), sampling=SamplingConfig(dense_fps=8))
    assert plan.frames.tolist() == list(range(15))
    assert plan.frames[plan.dense].tolist() == list(range(15))


@pytest.mark.parametrize(
    ("recipe", "overrides", "dense"),
    [
        ("stage2.yaml", [], False),  # learned filters only: no frame filter at all
        ("demo.yaml", [], True),  # cuts, motion and camera read the grid
        (
            "demo.yaml",
            [
                "filters.cuts.enable=false",
                "filters.motion.enable=false",
                "filters.camera.enable=false",
            ],
            False,
        ),  # fmt: skip
        ("demo.yaml", ["filters.motion.enable=false"], True),
    ],
)
def test_plans_carry_the_dense_grid_only_when_an_enabled_filter_reads_it(recipe, overrides, dense):
    """The filters declare the dense grid (`reads`); a recipe none of whose enabled filters
    reads it plans the clips' frames alone, the clips unchanged, through the video plane."""
    from pathlib import Path

    from vqf.config import load_recipe
    from vqf.filters import FILTERS, dense_fps

    readers = [n for n, cls in FILTERS.items() if "dense" in cls.reads]
    assert readers == ["camera", "cuts", "motion"]
    loaded = load_recipe(Path(__file__).parent.parent / "pipelines" / recipe, overrides=overrides)
    assert loaded.sampling.dense_fps == 8.0  # the recipe's grid, used or not
    fps = dense_fps(loaded)
    assert fps == (8.0 if dense else 0.0)
    ts = cfr(60, 30)
    planned = make_plan(ts, sampling=loaded.sampling, dense_fps=fps)
    every = make_plan(ts, sampling=loaded.sampling)
    assert [planned.frame_indices(c).tolist() for c in planned.clips] == [
        every.frame_indices(c).tolist() for c in every.clips
    ]
    if dense:
        assert len(planned.frames) == len(every.frames) and len(planned.dense) > 0
    else:
        # stage2's windows read 12 frames a second: the grid added about 30% more
        assert len(planned.dense) == 0 and len(planned.frames) < 0.85 * len(every.frames)


def test_dense_fps_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="dense_fps"):
        SamplingConfig(dense_fps=-1)


def test_short_video_repeats_frames_to_fill_a_clip():
    plan = make_plan(cfr(1, 10), sampling=SamplingConfig())
    for clip in plan.clips:
        idx = plan.frame_indices(clip)
        assert len(idx) == 48
        assert set(idx.tolist()) == set(range(10))


def test_variable_frame_rate_picks_by_time():
    # 2 s at 50 fps, then 5 s at 5 fps: a window over the sparse part holds few frames
    ts = np.concatenate([np.arange(100) / 50, 2 + np.arange(25) / 5])
    plan = make_plan(ts, sampling=SamplingConfig(window_frames=8), duration_s=7.0)
    second = plan.clips_of("segment")[1]  # [3, 7]
    assert (second.start_s, second.end_s) == (3, 7)
    times = ts[plan.frame_indices(second)]
    assert times.min() >= 3 and times.max() < 7
    first = plan.frame_indices(plan.clips_of("segment")[0])  # [0, 4]: spread by time
    assert ts[first].min() == 0 and ts[first].max() == pytest.approx(3.8)


def test_detection_frames_are_spread_and_in_the_union():
    plan = make_plan(cfr(10, 10), sampling=SamplingConfig(detect_frames=4))
    assert plan.detect_frames.tolist() == [0, 33, 66, 99]
    assert np.isin(plan.detect_frames, plan.frames).all()


@st.composite
def videos(draw):
    n = draw(st.integers(1, 400))
    fps = draw(st.sampled_from([5.0, 12.5, 24.0, 30.0, 60.0]))
    steps = np.full(n, 1 / fps)
    if draw(st.booleans()):  # variable frame rate
        seed = draw(st.integers(0, 2**16))
        steps *= np.random.default_rng(seed).uniform(0.2, 3.0, size=n)
    ts = np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    sampling = SamplingConfig(
        whole_frames=draw(st.integers(1, 64)),
        window_frames=draw(st.integers(1, 64)),
        window_s=draw(st.sampled_from([1.0, 2.0, 4.0])),
        stride_s=draw(st.sampled_from([0.5, 1.0, 3.0])),
        tail_min_s=draw(st.sampled_from([0.0, 0.5, 1.0])),
        detect_frames=draw(st.integers(1, 8)),
        dense_fps=draw(st.sampled_from([0.0, 2.0, 8.0])),
    )
    return ts, sampling


@settings(max_examples=60, deadline=None)
@given(videos())
def test_plan_properties(video):
    ts, sampling = video
    plan = make_plan(ts, sampling=sampling)
    n, duration = len(ts), plan.duration_s
    frames = plan.frames
    assert np.all(np.diff(frames) > 0), "union sorted, no duplicates"
    assert frames.min() >= 0 and frames.max() < n
    for clip in plan.clips:
        assert len(clip.take) == (
            sampling.whole_frames if clip.kind == "whole" else sampling.window_frames
        )
        assert clip.take.min() >= 0 and clip.take.max() < len(frames)
    needed = np.concatenate(
        [plan.frame_indices(c) for c in plan.clips] + [plan.detect_frames, frames[plan.dense]]
    )
    assert set(needed.tolist()) == set(frames.tolist()), "the union is exactly what clips need"
    if sampling.dense_fps and n > 1:
        # the dense grid leaves no gap over 1/dense_fps that the video itself does not have
        gaps = np.diff(ts[frames])
        worst = np.maximum(1 / sampling.dense_fps, np.diff(ts).max())
        assert gaps.max() <= worst + 1e-3  # the grid decides on times rounded to 1 ms

    segments, inverses = plan.clips_of("segment"), plan.clips_of("inverse")
    assert len(segments) == len(inverses)
    for seg, inv in zip(segments, inverses, strict=True):
        assert (seg.start_s, seg.end_s) == (inv.start_s, inv.end_s)
        assert np.array_equal(inv.take, seg.take[::-1])
        idx = plan.frame_indices(seg)
        shown = ts[idx]
        if np.any((ts >= seg.start_s - 1e-6) & (ts < seg.end_s - 1e-6)):
            assert shown.min() >= seg.start_s - 1e-6 and shown.max() < seg.end_s
        assert np.all(np.diff(idx) >= 0), "segment frames in playing order"

    starts = [s.start_s for s in segments]
    ends = [s.end_s for s in segments]
    if duration < sampling.window_s:
        assert (starts, ends) == ([0.0], [pytest.approx(duration, abs=1e-5)])
        return
    regular = [s for s in segments if abs(s.end_s - s.start_s - sampling.window_s) < 1e-5]
    assert len(regular) == len(segments)
    for k, start in enumerate(starts[: len(starts) - 1]):
        assert start == pytest.approx(k * sampling.stride_s, abs=1e-5)
    uncovered = duration - max(ends)
    assert uncovered <= sampling.tail_min_s + 1e-5, "a long tail gets an end-aligned window"
    assert max(ends) <= duration + 1e-5
    if sampling.stride_s <= sampling.window_s:
        gaps = np.array(starts[1:]) - np.array(ends[:-1])
        assert np.all(gaps <= 1e-5), "windows leave no hole"
