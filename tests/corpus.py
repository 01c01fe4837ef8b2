"""The bad-input corpus: every way an input row or file can be wrong, generated with PyAV.

`build_corpus(root)` writes the files under `root/videos` and returns `Case`s: the input row
and what its output row must say (an error type, or success). Frames are tiny so the whole
corpus encodes in a few seconds; the 8K case is two MJPEG frames at 8192x4320, refused by the
probe's default `decode.max_pixels` (7680x4320) before anything decodes it.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vqf.video.synth import draw_frame, make_audio, make_video

OK = "ok"  # expected outcome: a success row


@dataclass(frozen=True)
class Case:
    """One corpus entry: its input row and the expected outcome (an ErrorType value or OK)."""

    kind: str
    row: dict
    expect: str | tuple[str, ...]


def build_corpus(root: Path) -> list[Case]:
    """Writes the corpus's files under `root/videos`; rows give paths relative to `root`."""
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for kind, (make, expect) in FILE_CASES.items():
        path = make(videos, kind)
        cases.append(Case(kind, _row(kind, path.relative_to(root).as_posix()), expect))
    base = _base(videos).relative_to(root).as_posix()
    cases += [
        Case("row_missing_path", {"video_id": "row_missing_path", "info": "{}"}, "row_malformed"),
        Case("row_missing_id", {"video_path": base, "info": "{}"}, "row_malformed"),
        Case("row_bad_json_info", _row("row_bad_json_info", base, info="{oops"), "row_malformed"),
        Case(
            "row_info_not_object", _row("row_info_not_object", base, info="[1, 2]"), "row_malformed"
        ),
        Case("dup_id", _row("dup_id", base), OK),
        Case("dup_id", _row("dup_id", base), "duplicate_row"),
        Case("escape_dotdot", _row("escape_dotdot", "videos/../../outside.mp4"), "path_refused"),
        Case("escape_absolute", _row("escape_absolute", "/etc/hostname"), "path_refused"),
        Case(
            "escape_bucket_key",
            _row("escape_bucket_key", "../../etc/passwd", bucket="bucket"),
            "path_refused",
        ),
        Case("missing_file", _row("missing_file", "videos/no such file.mp4"), "not_found"),
    ]
    return cases


def write_table(cases: list[Case], path: Path, *, garbage_line: bool = True) -> Path:
    """The JSONL input table of `cases`, plus a line that is not JSON at all."""
    lines = [json.dumps(c.row, ensure_ascii=False) for c in cases]
    if garbage_line:
        lines.append("{this line is not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(video_id: str, path: str, *, info: str = "{}", bucket: str = "") -> dict:
    return {
        "video_id": video_id,
        "oss_bucket": bucket,
        "video_path": path,
        "video_tag": "corpus",
        "info": info,
    }


# -- file generators: (folder, kind) -> path ------------------------------------------------


def _base(d: Path) -> Path:
    """A good 2 s H.264 clip; several cases damage a copy of it."""
    path = d / "base.mp4"
    if not path.exists():
        make_video(path, codec="h264", width=64, height=48, seconds=2.0, fps=10)
    return path


def _write(d: Path, name: str, data: bytes) -> Path:
    path = d / name
    path.write_bytes(data)
    return path


def _truncated(share: float):
    def make(d: Path, kind: str) -> Path:
        data = _base(d).read_bytes()
        return _write(d, f"{kind}.mp4", data[: int(len(data) * share)])

    return make


def _moov_missing(d: Path, kind: str) -> Path:
    """Every atom but the index (moov): what a recorder that died before closing leaves."""
    data = _base(d).read_bytes()
    at = data.find(b"moov") - 4  # the atom starts with its 4-byte size
    return _write(d, f"{kind}.mp4", data[:at])


def _corrupt_middle(d: Path, kind: str) -> Path:
    """Random bytes over the middle third of the packets; the container's index is intact."""
    data = bytearray(_base(d).read_bytes())
    mdat = data.find(b"mdat") + 4
    moov = data.find(b"moov")
    lo, hi = mdat + (moov - mdat) // 3, mdat + 2 * (moov - mdat) // 3
    data[lo:hi] = np.random.default_rng(1).bytes(hi - lo)
    return _write(d, f"{kind}.mp4", bytes(data))


def _unsupported_codec(d: Path, kind: str) -> Path:
    data = _base(d).read_bytes().replace(b"avc1", b"qqq1")  # a sample entry no decoder claims
    return _write(d, f"{kind}.mp4", data)


def _huge_declared_duration(d: Path, kind: str) -> Path:
    """A Matroska header that declares 11 days; the packets last 1 s."""
    path = make_video(d / f"{kind}.mkv", codec="mjpeg", width=48, height=32, seconds=1.0)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")  # the Segment Info's Duration element, in milliseconds
    if data[at + 2] == 0x88:
        struct.pack_into(">d", data, at + 3, 1e9)
    else:
        struct.pack_into(">f", data, at + 3, 1e9)
    path.write_bytes(bytes(data))
    return path


def _video(**opts) -> Callable[[Path, str], Path]:
    def make(d: Path, kind: str) -> Path:
        suffix = opts.pop("suffix", ".mp4")
        return make_video(d / f"{kind}{suffix}", **opts)

    return make


def _timed(path: Path, times: list[float], *, width: int = 48, height: int = 32, codec="libx264"):
    """Encodes one frame at each presentation time (seconds, increasing)."""
    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tb
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, width=width, height=height), "rgb24")
            frame.pts, frame.time_base = round(t * 1000), tb
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _vfr_gaps(d: Path, kind: str) -> Path:
    times = [i * 0.1 for i in range(10)] + [2.5 + i * 0.1 for i in range(10)]  # 1.5 s hole
    return _timed(d / f"{kind}.mkv", times)


def _timestamps_backwards(d: Path, kind: str) -> Path:
    """Two MPEG-TS segments cut together: the second one's clock starts again at zero."""
    a = _timed(d / f"{kind}-a.ts", [i * 0.1 for i in range(15)])
    b = _timed(d / f"{kind}-b.ts", [i * 0.1 for i in range(15)])
    out = d / f"{kind}.ts"
    out.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    return out


def _two_video_streams(d: Path, kind: str) -> Path:
    import av

    path = d / f"{kind}.mkv"
    with av.open(str(path), "w") as out:
        streams = []
        for size in ((48, 32), (32, 32)):
            s = out.add_stream("mjpeg", rate=10)
            s.width, s.height, s.pix_fmt = *size, "yuvj420p"
            streams.append(s)
        for i in range(10):
            for s in streams:
                picture = draw_frame(i, width=s.width, height=s.height)
                out.mux(s.encode(av.VideoFrame.from_ndarray(picture, "rgb24")))
        for s in streams:
            out.mux(s.encode())
    return path


def _eight_k(d: Path, kind: str) -> Path:
    import av

    path = d / f"{kind}.mkv"
    width, height = 8192, 4320
    picture = np.zeros((height, width, 3), np.uint8)  # flat: MJPEG encodes it quickly
    with av.open(str(path), "w") as out:
        s = out.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuvj420p"
        for _ in range(2):
            out.mux(s.encode(av.VideoFrame.from_ndarray(picture, "rgb24")))
        out.mux(s.encode())
    return path


def _interlaced(d: Path, kind: str) -> Path:
    return make_video(
        d / f"{kind}.mp4",
        width=64,
        height=48,
        seconds=1.0,
        options={"x264-params": "interlaced=1:tff=1"},
    )


def _non_ascii_name(d: Path, kind: str) -> Path:
    path = d / "a clip with spaces – ünïcødé 视频.mp4"
    shutil.copyfile(_base(d), path)
    return path


FILE_CASES: dict[str, tuple[Callable[[Path, str], Path], str | tuple[str, ...]]] = {
    "zero_bytes": (lambda d, k: _write(d, f"{k}.mp4", b""), "not_a_video"),
    "random_bytes": (
        lambda d, k: _write(d, f"{k}.mp4", np.random.default_rng(0).bytes(20000)),
        "not_a_video",
    ),
    "html_error_page": (
        lambda d, k: _write(
            d,
            f"{k}.mp4",
            b"<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>\n",
        ),
        "not_a_video",
    ),
    "truncated_10": (_truncated(0.10), "corrupt_stream"),
    "truncated_50": (_truncated(0.50), "corrupt_stream"),
    "truncated_99": (_truncated(0.99), "corrupt_stream"),
    "moov_missing": (_moov_missing, "corrupt_stream"),
    # FFmpeg refuses the damaged packets mid-plan: a decode failure, not a crash or a hang
    "corrupt_packets_middle": (_corrupt_middle, "decode_failed"),
    "audio_only": (lambda d, k: make_audio(d / f"{k}.m4a", seconds=1.0), "not_a_video"),
    "single_frame": (_video(seconds=0.1, fps=10, width=48, height=32), OK),
    "short_0_2s": (_video(seconds=0.2, fps=10, width=48, height=32), OK),
    "shorter_than_window": (_video(seconds=1.5, fps=10, width=48, height=32), OK),
    "frames_8k": (_eight_k, "too_large"),
    "frames_16x16": (_video(width=16, height=16, seconds=1.0), OK),
    "odd_size_33x17": (_video(codec="mjpeg", width=33, height=17, seconds=1.0, suffix=".mkv"), OK),
    "hevc_10bit": (_video(codec="hevc", pix_fmt="yuv420p10le", width=64, height=48), OK),
    "chroma_444": (_video(codec="h264", pix_fmt="yuv444p", width=64, height=48), OK),
    "interlaced": (_interlaced, OK),
    "vfr_with_gaps": (_vfr_gaps, OK),
    "timestamps_backwards": (_timestamps_backwards, OK),
    "rotation_90": (_video(rotation=90, width=48, height=32), OK),
    "rotation_180": (_video(rotation=180, width=48, height=32), OK),
    "rotation_270": (_video(rotation=270, width=48, height=32), OK),
    "huge_declared_duration": (_huge_declared_duration, OK),
    "two_video_streams": (_two_video_streams, OK),
    "unsupported_codec": (_unsupported_codec, "unsupported_codec"),
    "name_with_spaces_unicode": (_non_ascii_name, OK),
}
