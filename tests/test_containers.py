"""Every container class a crawl meets decodes, and "frame i" means the same thing everywhere.

Tiny copies (2 s, 160x96) of one generated video with a hard cut at 1.0 s, made with FFmpeg in
the containers crawled corpora are full of: MPEG-2 in a program stream (starting at 0.54 s, as
camcorders and DVDs write them) and in a transport stream, MPEG-4 Part 2 in AVI with B-frames
(the XviD family), MPEG-1, Cinepak and MJPEG in AVI, VP9 in Matroska, H.264 in MP4 cut with an
edit list, H.264 in a transport stream, and one whose picture size changes at the cut. For each:

- `vqf run` writes a successful row on the expected route, and the cut is reported at 1.0 s
  (times count from the first frame shown, whatever the stream's start time);
- the probe's frame count and times are those an independent PyAV decode shows;
- the detection frames found by seeking are bit-identical to that decode's frames at the same
  indices, and the route's planned frames match it within test_frames' tolerance.

Chunk-size invariance: the frame filters' verdicts do not depend on `decode.chunk_frames`,
with a cut placed exactly on a chunk boundary.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.footage import ffmpeg
from tests.scenes import Footage, Join, Shot
from tests.test_engine import read_rows, vqf
from tests.test_frames import assert_close, plane_for, reference_clip

CUT_S = 1.0
EDIT_S = 0.2  # the edit-list copy starts this far into the video: its cut shows at 0.8 s
SCALE = ["-vf", "scale=160:96", "-an"]
MPEG = ["-bf", "2", "-g", "12", "-q:v", "3"]
# name: (suffix, FFmpeg output options, route on the CPU)
CLASSES = {
    "mpeg2_ps": (".mpg", ["-c:v", "mpeg2video", *MPEG, "-f", "vob", "-output_ts_offset", "0.54"],
                 "pyav"),
    "mpeg2_ts": (".ts", ["-c:v", "mpeg2video", *MPEG, "-f", "mpegts"], "pyav"),
    "mpeg4_avi": (".avi", ["-c:v", "mpeg4", "-vtag", "XVID", *MPEG], "pyav"),
    "mpeg1": (".mpg", ["-c:v", "mpeg1video", *MPEG], "pyav"),
    "cinepak_avi": (".avi", ["-c:v", "cinepak", "-max_extra_cb_iterations", "0", "-max_strips",
                             "1"], "pyav"),
    "mjpeg_avi": (".avi", ["-c:v", "mjpeg", "-q:v", "3"], "dali-cpu"),
    "vp9_mkv": (".mkv", ["-c:v", "libvpx-vp9", "-b:v", "400k", "-g", "12", "-deadline",
                         "realtime", "-cpu-used", "8"], "dali-cpu"),
    "h264_ts": (".ts", ["-c:v", "libx264", "-bf", "3", "-g", "12", "-f", "mpegts"], "pyav"),
    "h264_mp4_edit_list": (".mp4", [], "pyav"),
    "h264_ts_size_change": (".ts", [], "pyav"),
}  # fmt: skip
WEIGHT_FREE = """
name: containers
sampling: {whole_frames: 8, window_frames: 8, height: 32, width: 32, detect_frames: 4,
           detect_size: 64}
decode: {route: auto, batch_size: 2, workers: 2}
models: {}
filters:
  vfx: {enable: false}
  simcam: {enable: false}
  rov: {enable: false}
  low_quality: {enable: false}
  abnormal_region: {enable: false}
  borders: {enable: true}
  motion: {enable: true}
  sharpness: {enable: true}
  exposure: {enable: true}
  cuts: {enable: true}
  bitrate: {enable: true}
engine: {device: cpu}
"""


# the demo's thresholds: verdicts to compare besides the scores
THRESHOLDS = {
    "motion": {"score_min": 0.004},
    "sharpness": {"score_min": 0.15},
    "exposure": {"mean_luma_min": 0.15, "bright_share_max": 0.5},
    "cuts": {"count_max": 0},
}


def run_ffmpeg(*args: str) -> None:
    cmd = [ffmpeg(), "-v", "error", "-nostdin", "-y", *args]
    subprocess.run(cmd, check=True, timeout=120)


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    """name -> a 2 s copy of one generated video in that container class."""
    folder = tmp_path_factory.mktemp("containers")
    footage = Footage((Shot("noise", CUT_S), Shot("gradient", 1.0, seed=2)), (Join("cut"),))
    source = footage.write(folder / "source.mp4")
    out = {}
    for name, (suffix, options, _) in CLASSES.items():
        path = folder / f"{name}{suffix}"
        if name == "h264_mp4_edit_list":  # a stream copy cut between keyframes: an edit list
            wide = folder / "wide.mp4"
            run_ffmpeg("-i", str(source), *SCALE, "-c:v", "libx264", "-g", "25", str(wide))
            run_ffmpeg("-ss", str(EDIT_S), "-i", str(wide), "-c", "copy", str(path))
        elif name == "h264_ts_size_change":  # 160x96, then 128x80 from the cut on
            h264 = ["-an", "-c:v", "libx264", "-bf", "2", "-g", "12", "-f", "mpegts"]
            a, b = folder / "a.ts", folder / "b.ts"
            run_ffmpeg("-i", str(source), "-t", str(CUT_S), *SCALE, *h264, str(a))
            run_ffmpeg("-ss", str(CUT_S), "-i", str(source), "-vf", "scale=128:80", *h264,
                       "-output_ts_offset", str(CUT_S + 0.1), str(b))  # fmt: skip
            path.write_bytes(a.read_bytes() + b.read_bytes())
        else:
            run_ffmpeg("-i", str(source), *SCALE, *options, str(path))
        out[name] = path
    return out


def pyav_decode(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every frame as PyAV shows it from the start, and its time from the first frame shown."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pairs = [(f.to_ndarray(format="rgb24"), f.pts) for f in container.decode(stream)]
        tb = float(stream.time_base)
    pts = np.sort(np.asarray([p for _, p in pairs], dtype=np.float64))
    return [f for f, _ in pairs], (pts - pts[0]) * tb


@pytest.fixture(scope="module")
def rows(copies, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("containers-run")
    recipe = folder / "recipe.yaml"
    recipe.write_text(WEIGHT_FREE)
    table = folder / "in.jsonl"
    table.write_text(
        "".join(json.dumps({"video_id": k, "video_path": str(v)}) + "\n" for k, v in copies.items())
    )
    out = folder / "out"
    done = vqf("run", str(recipe), "--tables", str(table), "--outputs", str(out), cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return {r["video_id"]: r for r in read_rows(out)}


@pytest.mark.parametrize("name", list(CLASSES))
def test_vqf_run_decodes_every_container_class(rows, name):
    row = rows[name]
    result = row["result_info"]
    assert result["succeed"] == "true", result.get("error")
    assert result["decode_route"] == CLASSES[name][2]
    cuts = row["info"]["cuts"]
    # the cut at 1.0 s, counted from the first frame shown (the program stream starts at
    # 0.54 s, the transport streams at 1.4 s; the edit list shows from 0.2 s on); placed
    # between two dense frames 1/8 s apart
    at = CUT_S - (EDIT_S if name == "h264_mp4_edit_list" else 0.0)
    assert cuts["kinds"] == ["cut"] and abs(cuts["times"][0] - at) <= 0.07, cuts


@pytest.mark.parametrize("name", list(CLASSES))
def test_frame_numbering_matches_an_independent_decode(copies, name):
    from vqf.video.pyav_route import seek_frames

    path = copies[name]
    frames, times = pyav_decode(path)
    plane = plane_for("cpu")
    prepared = plane.prepare(path, uri=str(path))
    info, plan = prepared.info, prepared.plan
    assert info.frame_count == len(frames)
    np.testing.assert_allclose(info.timestamps, times, atol=1e-6)
    # detection frames by seeking: exactly the frames a decode from the start shows there
    wanted = np.unique(np.concatenate([plan.detect_frames, [len(frames) - 1]]))
    found = seek_frames(path, wanted, pts=info.pts, keyframes=info.keyframes)
    for got, i in zip(found.frames, wanted, strict=True):
        if got.shape == frames[i].shape:
            assert np.array_equal(got, frames[i]), f"frame {i}"
        else:  # after a size change: scaled to the first size, as the decode route does
            assert got.shape == frames[0].shape
            want = reference_clip([frames[i]], [0])
            assert_close(reference_clip([got], [0]), want, mean_tol=3.0, p99_tol=20.0)
    # the route's planned frames are those frames too
    (decoded,) = plane.decode([prepared])
    assert decoded.route == CLASSES[name][2]
    assert_close(decoded.frames, reference_clip(frames, plan.frames))


def test_seeks_that_land_late_are_counted_and_recovered(copies):
    """MPEG program streams land a keyframe late on every seek: the frames are still found
    (test above), and the detect stage counts the video under detect_seek_fallbacks."""
    from vqf.config import Recipe, build
    from vqf.engine.rank import Rank
    from vqf.video.pyav_route import seek_frames

    ps = copies["mpeg2_ps"]
    plane = plane_for("cpu")
    info = plane.prepare(ps, uri=str(ps)).info
    late = seek_frames(ps, info.keyframes[1:3], pts=info.pts, keyframes=info.keyframes)
    assert late.fell_back and late.decoded < info.frame_count  # not a pass over the video
    mp4 = copies["h264_mp4_edit_list"]
    info = plane.prepare(mp4, uri=str(mp4)).info
    assert not seek_frames(mp4, info.keyframes, pts=info.pts, keyframes=info.keyframes).fell_back

    import yaml

    folder = ps.parent / "counted"
    folder.mkdir(exist_ok=True)
    table = folder / "in.jsonl"
    table.write_text(
        json.dumps({"video_id": "ps", "video_path": str(ps)})
        + "\n"
        + json.dumps({"video_id": "mp4", "video_path": str(mp4)})
        + "\n"
    )
    spec = yaml.safe_load(WEIGHT_FREE)
    spec.update(tables=str(table), outputs=str(folder / "out"))
    snap = Rank(build(Recipe, spec, "containers"), rank=0, world_size=1, device="cpu").run()
    assert snap["counters"]["succeeded"] == 2
    assert snap["counters"]["detect_seek_fallbacks"] == 1


def test_frame_filters_do_not_depend_on_chunk_size(tmp_path):
    """chunk_frames 3, 7 and 10,000 give the same verdicts; the cut falls exactly between
    planned frames 20 and 21, a chunk boundary for both 3 and 7."""
    import yaml

    from vqf.config import Recipe, SamplingConfig, build
    from vqf.engine.rank import Rank
    from vqf.video.plan import make_plan

    fps, frames = 25, 100
    spec = yaml.safe_load(WEIGHT_FREE)
    sampling = build(SamplingConfig, spec["sampling"], "sampling")
    plan = make_plan(np.arange(frames) / fps, sampling=sampling)
    cut, before = int(plan.frames[21]), int(plan.frames[20])  # cut: the new shot's first frame
    dense = set(plan.frames[plan.dense].tolist())
    assert cut in dense and before in dense  # the pair the cut lies between, one per chunk
    footage = Footage(
        (Shot("noise", cut / fps), Shot("gradient", (frames - cut) / fps, seed=2)),
        (Join("cut"),),
        fps=fps,
    )
    path = footage.write(tmp_path / "cut.mp4")
    table = tmp_path / "in.jsonl"
    table.write_text(json.dumps({"video_id": "v", "video_path": str(path)}) + "\n")
    verdicts = {}
    for chunk in (3, 7, 10_000):
        spec = yaml.safe_load(WEIGHT_FREE)
        spec["decode"]["chunk_frames"] = chunk
        spec.update(tables=str(table), outputs=str(tmp_path / f"out{chunk}"))
        for name, thresholds in THRESHOLDS.items():
            spec["filters"][name]["thresholds"] = thresholds
        Rank(build(Recipe, spec, "chunks"), rank=0, world_size=1, device="cpu").run()
        (row,) = read_rows(tmp_path / f"out{chunk}")
        result = row["result_info"]
        assert result["succeed"] == "true"
        verdicts[chunk] = {k: row["info"][k] for k in THRESHOLDS}
        verdicts[chunk]["decision"] = (result["keep"], result["reasons"])
    assert verdicts[3]["cuts"]["count"] == 1
    assert verdicts[3]["cuts"]["times"][0] == pytest.approx((before + cut) / 2 / fps, abs=1e-3)
    assert verdicts[3]["decision"][0] is False  # the cut drops it (count_max 0)
    assert verdicts[3] == verdicts[7] == verdicts[10_000]
