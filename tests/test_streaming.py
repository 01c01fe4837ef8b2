"""The streaming engine: chunked decode, clips assembled as frames arrive, detection by
seeking, memory that does not grow with video length, and decode overlapping the models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_engine import read_rows
from vqf.config import DecodeConfig, Recipe, SamplingConfig, load_recipe
from vqf.engine.assemble import ClipAssembler
from vqf.video.plan import segment_windows
from vqf.video.plane import VideoPlane

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
SAMPLING = SamplingConfig(height=32, width=40, whole_frames=8, window_frames=8, detect_size=64)


def plane(**decode) -> VideoPlane:
    return VideoPlane(recipe=Recipe(sampling=SAMPLING, decode=DecodeConfig(**decode)), device="cpu")


@pytest.mark.parametrize(("codec", "route"), [("vp9", "dali-cpu"), ("h264", "pyav")])
def test_chunked_decode_gives_the_frames_of_one_pass(video_factory, codec, route):
    path = video_factory(codec=codec, width=96, height=64, seconds=3, rotation=90)
    whole, small = plane(chunk_frames=10_000), plane(chunk_frames=3)
    prepared = whole.prepare(path, uri=str(path))
    assert prepared.route == route and len(prepared.plan.frames) > 9
    (a,) = whole.decode([prepared])
    chunks = list(small.stream(prepared))
    # chunks follow each other through the plan, none over the chunk size
    ends = [c.start + len(c.frames) for c in chunks]
    assert [c.start for c in chunks] == [0, *ends[:-1]] and ends[-1] == len(prepared.plan.frames)
    assert max(len(c.frames) for c in chunks) <= 3
    b = torch.cat([c.frames for c in chunks])
    # swscale and DALI see the same frames either way: equal within float rounding
    assert (a.frames - b).abs().max().item() < 1e-4


def test_a_dali_route_decodes_each_frame_of_the_span_once(video_factory):
    """The file goes to DALI once per video and is decoded front to back: the decoder goes
    through the span up to the last planned frame once (at most one run past it), however
    small the chunks, where feeding the file per chunk re-decoded from a keyframe each time."""
    path = video_factory(codec="vp9", width=64, height=48, seconds=6, fps=20, gop=40)
    sparse = SamplingConfig(height=32, width=40, whole_frames=6, window_frames=4, dense_fps=0)
    small = VideoPlane(
        recipe=Recipe(sampling=sparse, decode=DecodeConfig(chunk_frames=4)), device="cpu"
    )
    prepared = small.prepare(path, uri=str(path))
    frames = prepared.plan.frames
    assert prepared.route == "dali-cpu" and len(frames) < frames[-1] // 2  # a sparse plan
    counter = {}
    chunks = list(small.stream(prepared, counter=counter))
    assert frames[-1] + 1 <= counter["decoded"] <= frames[-1] + 4
    assert all(0 < len(c.frames) <= 4 for c in chunks)
    assert [c.start for c in chunks] == sorted({c.start for c in chunks})
    one_pass = VideoPlane(
        recipe=Recipe(sampling=sparse, decode=DecodeConfig(chunk_frames=10_000)), device="cpu"
    )
    (whole,) = one_pass.decode([prepared])
    assert torch.equal(torch.cat([c.frames for c in chunks]), whole.frames)


def test_a_lane_left_half_way_through_a_video_gives_the_next_video_its_own_frames(
    video_factory,
):
    """A DALI route's pipeline keeps a video's bytes between runs: a video abandoned half way
    (its consumer closed the stream) must not hand its remaining frames to the next one."""
    first = video_factory(codec="vp9", width=64, height=48, seconds=4, seed=1)
    second = video_factory(codec="vp9", width=64, height=48, seconds=3, seed=2)
    lane = plane(chunk_frames=4)
    a, b = (lane.prepare(v, uri=str(v)) for v in (first, second))
    (want_a,) = plane(chunk_frames=4).decode([a])
    (want_b,) = plane(chunk_frames=4).decode([b])
    (got_a,) = lane.decode([a])  # read to its end: the pipeline is reused for the next
    chunks = lane.stream(b)
    next(chunks)
    chunks.close()  # abandoned after one chunk
    (got_a_again,) = lane.decode([a])
    (got_b,) = lane.decode([b])
    assert torch.equal(got_a.frames, want_a.frames)
    assert torch.equal(got_a_again.frames, want_a.frames)
    assert torch.equal(got_b.frames, want_b.frames)


def test_clips_assembled_from_chunks_equal_the_gathered_clips(video_factory):
    path = video_factory(codec="vp9", width=64, height=48, seconds=9)
    p = plane(chunk_frames=5)
    prepared = p.prepare(path, uri=str(path))
    (decoded,) = p.decode([prepared])
    assembler = ClipAssembler(prepared.plan, kinds={"whole", "segment", "inverse"})
    got = {}
    for chunk in p.stream(prepared):
        for piece in assembler.add(chunk.start, chunk.frames):
            for clip, reverse in piece.clips:
                got[(clip.kind, clip.index)] = piece.tensor.flip(0) if reverse else piece.tensor
    assert assembler.pending == 0
    assert len(got) == len(prepared.plan.clips)
    for clip in prepared.plan.clips:
        assert torch.equal(got[(clip.kind, clip.index)], decoded.clip_tensor(clip))
    # a reversed window shares its window's buffer: fewer buffers than clips
    assert assembler.pieces < len(prepared.plan.clips)


def test_detection_frames_are_found_by_seeking_not_by_a_pass_over_the_video(video_factory):
    from vqf.video.pyav_route import decode_all, seek_frames

    path = video_factory(codec="h264", width=96, height=64, seconds=20, fps=10, gop=10)
    p = plane(route="pyav")
    prepared = p.prepare(path, uri=str(path))
    det = p.detect_frames(prepared)
    spanned = int(prepared.plan.detect_frames.max()) + 1
    assert det.decoded <= 2 * 10 * len(det.indices)  # a GOP or two per frame
    assert det.decoded < spanned / 2  # far from a pass over the video
    # the frames are those a full decode from the start gives
    info, wanted = prepared.info, prepared.plan.detect_frames
    found = seek_frames(prepared.path, wanted, pts=info.pts, keyframes=info.keyframes)
    assert not found.fell_back
    assert np.array_equal(found.frames, decode_all(prepared.path, wanted))


def run_rank(recipe):
    from vqf.engine.rank import Rank

    rank = Rank(recipe, rank=0, world_size=1, device="cpu")
    rank.stats.keep_spans = True
    snap = rank.run()
    return rank, snap


def rows_of(out: Path) -> dict[str, dict]:
    """The output rows by video_id."""
    return {r["video_id"]: r for r in read_rows(out)}


def lean(tmp_path: Path, videos: dict[str, Path], *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"video_id": k, "video_path": str(v)}) + "\n"
                             for k, v in videos.items()))  # fmt: skip
    out = tmp_path / "out"
    return load_recipe(DEMO, overrides=[
        f"tables={table}", f"outputs={out}", "demo.generate=false",
        "filters.abnormal_region.enable=false", "filters.borders.enable=false",
        "filters.rov.enable=false", *extra,
    ]), out  # fmt: skip


def test_frames_in_flight_do_not_grow_with_video_length(tmp_path, video_factory):
    """The budget's own count of decoded-frame bytes in flight, peak over the run: under a
    1 MB budget, a 10 s and a 60 s video both stay within the budget plus the clips one chunk
    can open (a bound that does not depend on the length), and decode waited for the models
    instead of running on."""
    peaks = {}
    for seconds in (10, 60):
        path = video_factory(codec="h264", width=96, height=64, seconds=seconds, fps=10)
        recipe, out = lean(
            tmp_path / str(seconds), {"v": path}, "decode.chunk_frames=16",
            "decode.memory_budget_gb=0.001",
        )  # fmt: skip
        rank, snap = run_rank(recipe)
        assert rows_of(out)["v"]["result_info"]["succeed"] == "true"
        peaks[seconds] = rank.budget.peak["host"]
        assert rank.budget.used["host"] == 0  # every buffer was given back
        segments = rows_of(out)["v"]["info"]["seg_low_quality_filter"]
        windows = segment_windows(seconds, window_s=4.0, stride_s=3.0, tail_min_s=1.0)
        assert len(segments) == len(windows)  # every window was scored
    # the budget, plus what one chunk can open beyond it: the whole clip and three windows
    frame = 3 * recipe.sampling.height * recipe.sampling.width * 4
    bound = 0.001 * 1024**3 + frame * (
        recipe.sampling.whole_frames + 3 * recipe.sampling.window_frames
    )
    assert max(peaks.values()) <= bound, (peaks, bound)
    assert rank.budget.waits > 0


def test_vqf_run_decodes_the_dense_grid_only_for_a_filter_that_reads_it(tmp_path, video_factory):
    """Through the rank `vqf run` starts: with no enabled frame filter reading the dense grid
    (here the weight-free filters that do not, sharpness and exposure), each row plans and
    decodes fewer frames than with cuts on, and the rank's counters agree with the rows."""
    path = video_factory(codec="vp9", width=64, height=48, seconds=8, fps=24)
    planned, decoded = {}, {}
    for name, cuts in (("without", "false"), ("with", "true")):
        recipe, out = lean(
            tmp_path / name, {"v": path}, "filters.motion.enable=false",
            "filters.camera.enable=false",
            "filters.bitrate.enable=false", f"filters.cuts.enable={cuts}",
        )  # fmt: skip
        _, snap = run_rank(recipe)
        row = rows_of(out)["v"]
        assert row["result_info"]["succeed"] == "true", row
        assert ("cuts" in row["info"]) == (cuts == "true")
        assert "sharpness" in row["info"] and "exposure" in row["info"]
        planned[name] = row["result_info"]["frames_planned"]
        decoded[name] = row["result_info"]["frames_decoded"]
        assert snap["counters"]["frames_planned"] == planned[name]
        # the row counts the detection frames too (sharpness reads them); the counter only
        # the decode of the clips' span
        assert planned[name] <= snap["counters"]["frames_decoded"] <= decoded[name]
    # the demo's clips read 2 frames a second per window; the grid reads 8
    assert planned["without"] < planned["with"] / 2, planned


def test_decode_runs_while_the_models_work(tmp_path, video_factory, monkeypatch):
    """With a backbone and a decoder that take a while (and release the GIL, as NVDEC and a GPU
    call do), decode of later videos goes on during the model calls: their spans overlap. A
    serial loop (decode, then models) would show none."""
    import vqf.video.plane as plane_module
    from vqf.models.bank import ModelBank

    real_stream = plane_module.VideoPlane.stream

    def slow_stream(self, prepared, **kwargs):
        for chunk in real_stream(self, prepared, **kwargs):
            time.sleep(0.05)
            yield chunk

    monkeypatch.setattr(plane_module.VideoPlane, "stream", slow_stream)

    real = ModelBank.backbone

    class Slow:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, clips):
            time.sleep(0.05)
            return self.inner.encode(clips)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(ModelBank, "backbone", lambda self, name: Slow(real(self, name)))
    videos = {f"v{i}": video_factory(codec="vp9", seconds=3, seed=i) for i in range(4)}
    recipe, out = lean(tmp_path, videos, "decode.chunk_frames=4")
    rank, _ = run_rank(recipe)
    assert all(r["result_info"]["succeed"] == "true" for r in rows_of(out).values())
    from vqf.bench.trace import overlap_seconds

    both = overlap_seconds(rank.stats.spans, "decode", "model")
    assert both > 0.05, both


def test_a_stream_nvdec_refuses_is_decoded_on_the_cpu_and_counted(
    tmp_path, video_factory, monkeypatch
):
    """NVDEC rejecting a stream (Hopper's decoder has size, level and profile limits) costs the
    video nothing: it is decoded again through FFmpeg and the fallback is counted. Here the
    refusal is real: this machine's DALI has no mixed (GPU) decoder to run the route on."""
    import dataclasses

    import vqf.video.plane as plane_module

    real_probe = plane_module.probe

    def probe_nvdec(*args, **kwargs):
        return dataclasses.replace(real_probe(*args, **kwargs), route="nvdec")

    monkeypatch.setattr(plane_module, "probe", probe_nvdec)
    videos = {f"v{i}": video_factory(codec="h264", seconds=2, seed=i) for i in range(2)}
    recipe, out = lean(tmp_path, videos)
    rank, snap = run_rank(recipe)
    rows = rows_of(out)
    assert all(r["result_info"]["succeed"] == "true" for r in rows.values()), rows
    assert {r["result_info"]["decode_route"] for r in rows.values()} == {"pyav"}
    assert snap["counters"]["fallback_nvdec_to_cpu"] == 2


def test_detection_frames_of_a_dali_cpu_video_are_found_by_seeking(video_factory):
    """On the CPU a DALI-route video's detection frames come from FFmpeg's seeks: the frames
    it decoded (its own count) are a few GOPs, not a pass over the file, and they are the
    frames a decode from the start gives at the same indices."""
    path = video_factory(codec="vp9", width=96, height=64, seconds=30, fps=10, gop=10)
    p = plane(chunk_frames=16)
    prepared = p.prepare(path, uri=str(path))
    assert prepared.route == "dali-cpu"
    det = p.detect_frames(prepared)
    assert not det.fell_back and det.decoded < prepared.info.frame_count / 2, det.decoded
    # the frames as decoded (detection also letterboxes them) against a one-pass decode
    from vqf.bench.baseline import decode_frames

    expected = torch.from_numpy(decode_frames(path, det.indices))
    assert det.native.shape == expected.shape
    assert (det.native.int() - expected.int()).abs().max().item() <= 1
