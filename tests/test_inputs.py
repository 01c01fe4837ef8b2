"""Videos as users have them through `vqf run --tables`: a file, a folder, a glob, a list, an
OSS prefix; and `vqf score`. The runs go through the CLI's `main` in this process (the engine
is the same; one process saves the start-up of each run)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from vqf.cli import main
from vqf.errors import TableError
from vqf.schema import decode_record
from vqf.tables import open_source, shard_range

RECIPE = """
name: inputs
sampling: {whole_frames: 8, window_frames: 8, height: 64, width: 64, detect_frames: 2}
decode: {route: auto, batch_size: 2, workers: 2}
filters:
  motion: {enable: true, thresholds: {score_min: 0.004}}
  sharpness: {enable: true}
engine: {device: cpu, progress_every_s: 60}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "inputs.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def clips(video_factory) -> dict[str, Path]:
    return {
        "moving": video_factory(codec="h264", width=96, height=64, seconds=1.0, fps=8),
        "still": video_factory(
            codec="h264", width=96, height=64, seconds=1.0, fps=8, pattern="still"
        ),
    }


def run(recipe: Path, tables: str, out: Path, *extra: str) -> int:
    return main(
        ["run", str(recipe), "--tables", tables, "--outputs", str(out), "--dashboard", "plain"]
        + list(extra)
    )


def rows_of(out: Path) -> dict[str, dict]:
    source = open_source(str(out))
    return {r["video_id"]: decode_record(r) for r in source.read(start=0, count=source.count())}


def outcome(row: dict) -> str:
    ri = row["result_info"]
    return "ok" if ri["succeed"] == "true" else ri["error"]["type"]


def test_a_folder_of_videos(recipe, clips, tmp_path, caplog):
    folder = tmp_path / "videos"
    (folder / "day1" / "deep").mkdir(parents=True)
    (folder / "empty_sub").mkdir()
    shutil.copy(clips["moving"], folder / "b.mp4")
    shutil.copy(clips["still"], folder / "day1" / "deep" / "a.MOV")
    (folder / "notes.txt").write_text("not a video, by extension")
    (folder / "thumb.jpg").write_bytes(b"\xff\xd8")
    (folder / "fake.mp4").write_text("<html>a video extension, not a video</html>")
    os.symlink(tmp_path / "nowhere.mp4", folder / "dangling.mp4")
    outside = tmp_path / "outside.mp4"
    shutil.copy(clips["moving"], outside)
    os.symlink(outside, folder / "day1" / "escape.mp4")
    os.symlink(folder / "b.mp4", folder / "day1" / "inside.mp4")  # a link inside: read

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="vqf.tables.videos"):
        assert run(recipe, str(folder), out) == 0
    assert "skipped 2 file(s) without a video extension: notes.txt, thumb.jpg" in caplog.text
    rows = rows_of(out)
    assert {vid: outcome(r) for vid, r in rows.items()} == {
        "b.mp4": "ok",
        "day1/deep/a.MOV": "ok",
        "day1/inside.mp4": "ok",
        "fake.mp4": "not_a_video",
        "dangling.mp4": "row_malformed",
        "day1/escape.mp4": "row_malformed",
    }
    assert "leads outside" in rows["day1/escape.mp4"]["result_info"]["error"]["message"]
    assert "broken symlink" in rows["dangling.mp4"]["result_info"]["error"]["message"]
    # the weight-free verdict is there: the still clip fails the motion threshold
    assert rows["day1/deep/a.MOV"]["result_info"]["keep"] is False
    assert rows["b.mp4"]["result_info"]["keep"] is True

    # a rerun resumes: the ids are stable, nothing is written twice
    assert run(recipe, str(folder), out) == 0
    assert sum(1 for _ in out.glob("part-*.jsonl")) == 1
    lines = (out / "part-00000.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_a_file_a_glob_and_a_list(recipe, clips, tmp_path):
    folder = tmp_path / "v"
    (folder / "x").mkdir(parents=True)
    shutil.copy(clips["moving"], folder / "x" / "one.mp4")
    shutil.copy(clips["still"], folder / "two.mp4")
    (folder / "x" / "skip.mkv.txt").write_text("")

    assert run(recipe, str(folder / "two.mp4"), tmp_path / "file") == 0
    assert {v: outcome(r) for v, r in rows_of(tmp_path / "file").items()} == {"two.mp4": "ok"}

    assert run(recipe, f"{folder}/**/*.mp4", tmp_path / "glob") == 0
    assert {v: outcome(r) for v, r in rows_of(tmp_path / "glob").items()} == {
        "two.mp4": "ok",
        "x/one.mp4": "ok",
    }
    # the input rows come sorted, ids relative to the glob's fixed part
    glob_rows = open_source(f"{folder}/**/*.mp4").read(start=0, count=2)
    assert [r["video_id"] for r in glob_rows] == ["two.mp4", "x/one.mp4"]

    listing = tmp_path / "videos.txt"
    listing.write_text(
        f"# my videos\nv/x/one.mp4\n\n{folder / 'two.mp4'}\nv/gone.mp4\nv/x/one.mp4\n"
    )
    assert run(recipe, str(listing), tmp_path / "list") == 0
    out = tmp_path / "list" / "part-00000.jsonl"
    got = [decode_record(json.loads(line)) for line in out.read_text().splitlines()]
    by_id = {}
    for r in got:
        by_id.setdefault(r["video_id"], []).append(outcome(r))
    assert {k: sorted(v) for k, v in by_id.items()} == {
        "v/x/one.mp4": ["duplicate_row", "ok"],
        str(folder / "two.mp4"): ["ok"],
        "v/gone.mp4": ["not_found"],
    }


def test_bad_inputs_are_clear_errors(recipe, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    cases = {
        str(tmp_path / "empty"): "is empty",
        str(tmp_path / "docs"): "holds no video files; it holds 1 other file(s), e.g. 'readme.md'",
        f"{tmp_path}/*.webm": "matches no files",
        str(tmp_path / "blank.txt"): "names no videos",
    }
    for tables, message in cases.items():
        assert run(recipe, tables, tmp_path / "out") == 3, tables
        err = capsys.readouterr().err
        assert message in err, (tables, err)
        assert "hint" in err


def test_oss_prefix_listed_over_three_pages(recipe, clips, tmp_path, oss_server):
    from vqf.tables.videos import OssPrefix

    # 2 videos among 2,100 sidecar objects: three pages of 1,000 keys, videos on pages 1 and 3
    oss_server.put("media", "clips/aaa.mp4", clips["moving"].read_bytes())
    for i in range(2100):
        oss_server.put("media", f"clips/meta/{i:05d}.json", b"{}")
    oss_server.put("media", "clips/zzz.mp4", clips["still"].read_bytes())
    oss_server.put("media", "other/not-listed.mp4", b"outside the prefix")
    assert OssPrefix.page_size == 1000
    storage = [
        f"--set=storage.oss.endpoint={oss_server.endpoint}",
        "--set=storage.oss.region=cn-test",
        "--set=storage.oss.access_key_id=test-id",
        "--set=storage.oss.access_key_secret=test-secret",
        f"--set=storage.cache_dir={tmp_path / 'cache'}",
    ]
    out = tmp_path / "out"
    assert run(recipe, "oss://media/clips/", out, *storage) == 0
    rows = rows_of(out)
    assert {v: outcome(r) for v, r in rows.items()} == {
        "clips/aaa.mp4": "ok",
        "clips/zzz.mp4": "ok",
    }
    assert rows["clips/zzz.mp4"]["video_oss_url"] == "oss://media/clips/zzz.mp4"
    # each pass over the listing (the count, then the rank's rows) reads the three pages
    pages = [(p["prefix"], p["marker"], p["keys"]) for p in oss_server.listings]
    one_pass = [
        ("clips/", "", 1000),
        ("clips/", "clips/meta/00998.json", 1000),
        ("clips/", "clips/meta/01998.json", 102),
    ]
    assert pages == one_pass * 2, pages


def test_oss_rows_shard_deterministically(oss_server, monkeypatch):
    from vqf.config import OssConfig, StorageConfig
    from vqf.tables.videos import OssPrefix

    for i in range(23):
        oss_server.put("bkt", f"p/{i:03d}.mp4", b"x")
    monkeypatch.setattr(OssPrefix, "page_size", 5)
    storage = StorageConfig(
        oss=OssConfig(
            endpoint=oss_server.endpoint, region="r", access_key_id="i", access_key_secret="s"
        )
    )
    with pytest.raises(TableError, match="cannot list 'oss://b/p/'"):
        open_source("oss://b/p/", storage=storage).count()  # not a valid bucket name
    source = open_source("oss://bkt/p/", storage=storage)
    total = source.count()
    assert total == 23
    seen = []
    for rank in range(3):
        start, count = shard_range(total, rank=rank, world_size=3)
        seen += [r["video_id"] for r in source.read(start=start, count=count)]
    assert seen == [f"p/{i:03d}.mp4" for i in range(23)]


def test_score_prints_a_table_and_json(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # the terminal's width: one line a video
    a, b = Path("moving.mp4"), Path("still.mp4")
    shutil.copy(clips["moving"], a)
    shutil.copy(clips["still"], b)
    assert main(["score", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "vqf score" in text and "moving.mp4" in text and "still.mp4" in text
    lines = text.splitlines()
    still = next(i for i, line in enumerate(lines) if "still.mp4" in line)
    assert "drop" in lines[still] and "keep" in next(ln for ln in lines if "moving.mp4" in ln)
    assert "motion" in text  # a column per filter

    assert main(["score", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["video_id"] for r in rows] == [str(a.absolute()), str(b.absolute())]
    assert rows[0]["result_info"]["keep"] is True
    assert rows[1]["result_info"]["keep"] is False
    assert any("motion" in reason for reason in rows[1]["result_info"]["reasons"])
    assert set(rows[0]["info"]) >= {"motion", "sharpness", "borders", "cuts"}
