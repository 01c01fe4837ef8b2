"""The demo's own sample videos and input table, generated on first use (nothing is downloaded).

The samples cover the decode routes (H.264 and HEVC through PyAV on a CPU, VP9 and MJPEG through
DALI's CPU decoder), a rotated and a portrait video, a short one, one video of each defect the
weight-free filters find (letterbox bars, a still image, blur, a dark picture, two hard cuts;
vqf/ops/samples.py), and the bad inputs every curation table has: a missing file, a text file
named .mp4 and a truncated download.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vqf.config import Recipe

log = logging.getLogger(__name__)

# name -> make_video options, or make_sample options when they name a `defect`
# (sizes small so the demo runs in seconds on a laptop CPU)
SAMPLES: dict[str, dict] = {
    "h264_moving": dict(codec="h264", width=160, height=120, seconds=5.0, fps=12),
    "hevc_moving": dict(codec="hevc", width=160, height=120, seconds=3.0, fps=12),
    "vp9_moving": dict(codec="vp9", width=160, height=120, seconds=3.0, fps=12),
    "mjpeg_moving": dict(codec="mjpeg", width=160, height=120, seconds=2.0, fps=12),
    "h264_rotated90": dict(codec="h264", width=160, height=96, seconds=2.0, fps=12, rotation=90),
    "h264_portrait": dict(codec="h264", width=96, height=160, seconds=2.0, fps=12),
    "h264_vfr": dict(codec="h264", width=160, height=120, seconds=4.0, fps=12, vfr=True),
    "h264_still": dict(codec="h264", width=160, height=120, seconds=3.0, fps=12, pattern="still"),
    "defect_letterboxed": dict(defect="letterboxed", seconds=2.0),
    "defect_still": dict(defect="still", seconds=2.0),
    "defect_blurred": dict(defect="blurred", seconds=2.0),
    "defect_dark": dict(defect="dark", seconds=2.0),
    "defect_two_cuts": dict(defect="cuts", seconds=3.0),
}


def sample_rows(folder: Path) -> list[dict]:
    """Generates the sample videos under `folder` (once) and returns the input rows."""
    from vqf.ops.samples import make_sample
    from vqf.video.synth import make_video

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, opts) in enumerate(SAMPLES.items()):
        codec = opts.get("codec", "h264")
        suffix = ".webm" if codec == "vp9" else ".mkv" if codec == "mjpeg" else ".mp4"
        path = folder / f"{name}{suffix}"
        if not path.exists():
            make = make_sample if "defect" in opts else make_video
            make(path, seed=i, **opts)
        rows.append(_row(name, path))
    bad_text = folder / "not_a_video.mp4"
    bad_text.write_text("<html><body>404 Not Found</body></html>\n")
    rows.append(_row("html_error_page", bad_text))
    truncated = folder / "truncated.mp4"
    if not truncated.exists():
        data = (folder / "h264_moving.mp4").read_bytes()
        truncated.write_bytes(data[: len(data) // 10])
    rows.append(_row("truncated_download", truncated))
    rows.append(_row("missing_file", folder / "does_not_exist.mp4"))
    return rows


def _row(video_id: str, path: Path) -> dict:
    return {
        "video_id": video_id,
        "oss_bucket": "",
        "video_path": str(path.resolve()),
        "video_tag": "demo",
        "info": json.dumps({"source": "vqf demo"}),
    }


def prepare_demo(recipe: Recipe) -> None:
    """When the recipe asks for it, writes the sample table its `tables` URI names."""
    table = Path(recipe.tables)
    demo_dir = Path(recipe.demo.dir).resolve()
    # only the demo's own table is generated: a table passed with --tables must exist
    if not recipe.demo.generate or table.exists() or demo_dir not in table.resolve().parents:
        return
    log.info("demo: generating sample videos under %s", recipe.demo.dir)
    rows = sample_rows(Path(recipe.demo.dir) / "videos")
    table.parent.mkdir(parents=True, exist_ok=True)
    tmp = table.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(table)
