"""`vqf report` on the outputs of a real demo run: counts, failures, verdicts, charts, thumbnails."""

from __future__ import annotations

import base64
import html as html_module
import json
import os
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


CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1280,2000 "
    "--enable-logging=stderr --v=0 --virtual-time-budget=5000"
).split()

# Runs in the browser once the page has loaded: what a reader sees, as JSON in the DOM dump.
PROBE = """<script>
window.addEventListener('load', () => {
  const seen = {counts: {}, failures: [], dropped: {}, timelines: 0};
  for (const cell of document.querySelectorAll('#counts .count')) {
    seen.counts[cell.querySelector('span').innerText] = Number(cell.querySelector('b').innerText);
  }
  for (const tr of document.querySelectorAll('#failures tr')) {
    seen.failures.push([...tr.children].map(c => c.innerText.trim()));
  }
  for (const h of document.querySelectorAll('h3')) {
    if (!h.innerText.startsWith('dropped by')) continue;
    seen.dropped[h.innerText] = [...h.nextElementSibling.querySelectorAll('.card')].map(c => {
      const img = c.querySelector('img'), box = img ? img.getBoundingClientRect() : null;
      return {video: c.children[1].innerText, width: img ? img.naturalWidth : 0,
              height: img ? img.naturalHeight : 0, area: box ? box.width * box.height : 0};
    });
  }
  seen.timelines = [...document.querySelectorAll('#transitions svg')]
    .filter(s => s.getBoundingClientRect().width > 0).length;
  document.body.setAttribute('data-seen', JSON.stringify(seen));
});
</script>"""


def chromium(html: Path) -> tuple[str, list[str]]:
    """(the DOM after load, the console messages) of `html` in headless Chromium."""
    exe = shutil.which("chromium")
    if exe is None:
        message = "Debian's chromium is not installed (launch/test-deps.sh installs it)"
        if os.environ.get("VQF_REQUIRE_FOOTAGE") == "1":
            pytest.fail(f"VQF_REQUIRE_FOOTAGE=1 but {message}")
        pytest.skip(message)
    cmd = [exe, *CHROMIUM_FLAGS, "--dump-dom", html.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert "</html>" in done.stdout, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def test_the_report_in_a_headless_browser(page, tmp_path):
    # the console check can fail: a page that logs an error is caught
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>console.error('broken')</script></body></html>")
    assert any("broken" in line for line in chromium(control)[1])

    html = tmp_path / "report.html"
    html.write_text(page)
    _, console = chromium(html)
    assert console == []  # no errors, no warnings, nothing logged by the page

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom, _ = chromium(probed)
    found = re.search(r'data-seen="([^"]*)"', dom)
    assert found, dom[:500]
    seen = json.loads(html_module.unescape(found.group(1)))
    assert {k: seen["counts"][k] for k in ("videos", "scored", "failed", "kept", "dropped")} == {
        "videos": 7, "scored": 6, "failed": 1, "kept": 1, "dropped": 5
    }  # fmt: skip
    header, *failures = seen["failures"]
    assert header[:2] == ["type", "videos"] and len(failures) == 1
    assert failures[0][:3] == ["not_found", "1", "fetch"] and "gone.mp4 not found" in failures[0][3]
    for defect, rule in DEFECT_IDS.items():  # a decoded, displayed strip per dropped video
        strip = seen["dropped"][f"dropped by {rule.split('.')[0]}"]
        card = next(c for c in strip if c["video"] == defect)
        assert card["width"] > 0 and card["height"] > 0 and card["area"] > 0, (defect, card)
    assert seen["timelines"] == 6  # one drawn timeline per scored video
