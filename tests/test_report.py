"""`vqf report` on the outputs of a real demo run: counts, failures, verdicts, charts, thumbnails."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vqf.filters import borders, cuts, exposure, motion, sharpness  # noqa: F401  registers them

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
LEARNED = ("vfx", "simcam", "rov", "low_quality", "abnormal_region")
DEFECT_IDS = {
    "letterboxed": "borders.share_max",
    "still": "motion.score_min",
    "blurred": "sharpness.score_min",
    "dark": "exposure.mean_luma_min",
    "cuts": "cuts.count_max",
}


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory) -> Path:
    """A demo run (weight-free filters only, so it takes seconds) over one video per defect."""
    import os

    from vqf.cli import main
    from vqf.ops.samples import make_sample

    folder = tmp_path_factory.mktemp("report_run")
    rows = []
    for i, defect in enumerate(["normal", *DEFECT_IDS]):
        seconds = 3.0 if defect == "cuts" else 2.0
        path = make_sample(
            folder / "videos" / f"{defect}.mp4", defect=defect, seconds=seconds, seed=i
        )
        rows.append(
            {
                "video_id": defect,
                "oss_bucket": "",
                "video_path": str(path),
                "video_tag": "t",
                "info": "{}",
            }
        )
    rows.append(
        {"video_id": "gone", "oss_bucket": "", "video_path": str(folder / "gone.mp4"), "info": "{}"}
    )
    table = folder / "input.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = folder / "results"
    args = ["run", str(DEMO), "--tables", str(table), "--outputs", str(out)]
    args += [a for name in LEARNED for a in ("--set", f"filters.{name}.enable=false")]
    args += ["--set", f"storage.cache_dir={folder / 'cache'}"]
    cwd = os.getcwd()
    os.chdir(folder)  # the demo recipe's relative paths land in the temporary folder
    try:
        assert main(["--log-level", "WARNING", *args]) == 0
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def page(demo_outputs, tmp_path_factory) -> str:
    from vqf.ops.report import write_report

    out = write_report(demo_outputs, out=tmp_path_factory.mktemp("report") / "report.html")
    return out.read_text()


def count(page: str, label: str) -> int:
    match = re.search(rf"<b>(\d+)</b><span>{label}</span>", page)
    assert match, label
    return int(match.group(1))


def test_counts_and_failures(page):
    assert (count(page, "videos"), count(page, "scored"), count(page, "failed")) == (7, 6, 1)
    assert (count(page, "decided"), count(page, "kept"), count(page, "dropped")) == (6, 1, 5)
    failures = page.split("id='failures'")[1].split("</section>")[0]
    assert "<td>not_found</td><td>1</td>" in failures


def test_every_defect_is_dropped_by_its_rule(page):
    reasons = page.split("id='reasons'")[1].split("</section>")[0]
    for rule in DEFECT_IDS.values():
        assert f"<td>{rule}</td><td>1</td>" in reasons, rule
    for defect, rule in DEFECT_IDS.items():
        section = page.split(f"id='f-{rule.split('.')[0]}'")[1].split("</section>")[0]
        dropped = section.split("dropped by")[1]
        assert f"<div>{defect}</div>" in dropped and rule in dropped, defect


def test_each_filter_has_histograms_keep_curves_and_thumbnails(page):
    for key in ("borders", "motion", "sharpness", "exposure", "cuts"):
        section = page.split(f"id='f-{key}'")[1].split("</section>")[0]
        assert section.count("<svg") >= 2 and "<rect" in section and "<polyline" in section
        assert "highest" in section and "lowest" in section
        assert "data:image/jpeg;base64," in section
    motion_section = page.split("id='f-motion'")[1]
    assert "rule motion.score_min: keep when &ge; 0.004" in motion_section
    assert "keep 83% at 0.004" in motion_section  # 5 of the 6 scored videos move


def test_each_video_has_a_timeline_with_its_transitions_marked(page):
    section = page.split("id='transitions'")[1].split("</section>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>(<svg.*?</svg>)</td></tr>", section)
    assert sorted(r[0] for r in rows) == sorted(["normal", *DEFECT_IDS])  # every scored video
    strips = {video: (int(n), svg) for video, n, svg in rows}
    n, svg = strips["cuts"]  # two hard cuts, at 1 s and 2 s of 3 s
    marks = re.findall(r"<line class='mark (\w+)' x1='([\d.]+)'", svg)
    assert n == 2 and [kind for kind, _ in marks] == ["cut", "cut"]
    xs = [float(x) for _, x in marks]
    width = 480 - 2 * 4
    assert xs[0] == pytest.approx(4 + width / 3, abs=width * 0.08)
    assert xs[1] == pytest.approx(4 + 2 * width / 3, abs=width * 0.08)
    assert re.search(r"<title>cut at 1\.\d+ s</title>", svg) and "3.0 s</text>" in svg
    assert strips["normal"][0] == 0 and "class='mark" not in strips["normal"][1]


def test_thumbnails_are_real_jpegs_and_the_page_needs_no_network(page):
    images = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    assert len(set(images)) == 6  # one strip per scored video; the missing file has none
    data = base64.b64decode(images[0])
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "<script" not in page and "<link" not in page


def test_parquet_and_sharded_outputs_give_the_same_report(demo_outputs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqf.ops.report import read_rows, write_report

    rows = read_rows(str(demo_outputs))
    raw = [
        json.loads(line)
        for p in sorted(demo_outputs.glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    pq.write_table(pa.Table.from_pylist(raw), tmp_path / "out.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((raw[:3], raw[3:])):
        (shards / f"part-{i:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    for source in (tmp_path / "out.parquet", shards):
        assert sorted(r["video_id"] for r in read_rows(str(source))) == sorted(
            r["video_id"] for r in rows
        )
        html = write_report(source, out=tmp_path / "r.html", recipe=DEMO).read_text()
        assert count(html, "dropped") == 5 and "<td>cuts.count_max</td><td>1</td>" in html


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium package")
def test_headless_chromium_screenshot(page, tmp_path):
    html = tmp_path / "report.html"
    html.write_text(page)
    shot = tmp_path / "report.png"
    flags = "--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking"
    flags += " --disable-component-update --disable-sync --window-size=1280,2000"
    cmd = ["chromium", *flags.split(), f"--screenshot={shot}", html.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
