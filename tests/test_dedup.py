"""Embeddings written with the rows, and `vqf dedup` on real footage.

The backbone in tests is tiny and random, so what these tests can show is the plumbing (the
tokens of each video pooled, normalised, written beside JSONL or into Parquet, read back,
searched exactly, grouped, one kept per group) and that a random backbone's pooled tokens
still keep the gross look of a video: a re-encode and a speed change of a clip stay above
0.95 (0.997-0.998 measured) while five unrelated real clips stay below (at most 0.85), and a
20% crop is nearer to its source's copies (0.81) than to any unrelated clip (at most 0.61) but
far below 0.95. They cannot show that a trained backbone brings crops, re-grades or heavier
edits above a threshold, nor which threshold suits trained embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.footage import clip, derive
from vqf.cli import main
from vqf.embeddings import load
from vqf.ops.dedup import groups_of, similar_pairs

RECIPE = """
name: embeddings
sampling: {whole_frames: 16, window_frames: 8, height: 64, width: 64, detect_frames: 2}
decode: {route: auto, batch_size: 2, workers: 2}
models:
  backbone: {kind: vjepa2, size: tiny, init: random}
filters:
  vfx: {enable: true}
  motion: {enable: true}
sinks:
  embeddings: {enable: true, windows: true}
engine: {device: cpu, progress_every_s: 60}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "embeddings.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def windows_recipe(tmp_path_factory) -> Path:
    """Also a filter that reads the windows: their vectors exist only then (no extra pass)."""
    path = tmp_path_factory.mktemp("recipe") / "windows.yaml"
    path.write_text(RECIPE.replace("  motion:", "  low_quality: {enable: true}\n  motion:"))
    return path


def run(recipe: Path, tables: Path, out: Path) -> None:
    argv = ["run", str(recipe), "--tables", str(tables), "--outputs", str(out)]
    assert main([*argv, "--dashboard", "plain"]) == 0


def test_similar_pairs_in_blocks_equal_the_full_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    x[7] = x[3] + 0.01  # a few planted neighbours across block borders
    x[44] = x[3] - 0.01
    x[20] = x[19] * 3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    want = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.6}
    for block in (1, 7, 50, 64):
        got = similar_pairs(x, threshold=0.6, block=block)
        assert {(i, j) for i, j, _ in got} == want, block
        assert all(abs(c - full[i, j]) < 1e-5 for i, j, c in got)
    assert groups_of(50, [(3, 7, 1.0), (7, 44, 1.0), (19, 20, 1.0)]) == [[3, 7, 44], [19, 20]]


def test_parquet_outputs_carry_embedding_columns(windows_recipe, video_factory, tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "v"
    folder.mkdir()
    video = video_factory(codec="h264", width=96, height=64, seconds=6.0, fps=8)
    shutil.copy(video, folder / "a.mp4")
    (folder / "broken.mp4").write_text("not a video")
    out = tmp_path / "out.parquet"
    run(windows_recipe, folder, out)
    tables = [pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))]
    rows = [r for t in tables for r in t.to_pylist()]
    by_id = {r["video_id"]: r for r in rows}
    assert by_id["broken.mp4"].get("embedding_backbone") is None  # a failure has none
    vec = np.asarray(by_id["a.mp4"]["embedding_backbone"], np.float32)
    assert vec.shape == (64,)  # the tiny backbone's width
    assert abs(np.linalg.norm(vec) - 1) < 2e-3
    windows = by_id["a.mp4"]["window_embeddings_backbone"]
    segments = json.loads(by_id["a.mp4"]["info"])["seg_low_quality_filter"]
    assert len(windows) == len(segments) == 2  # a 6 s video: windows [0, 4] and [2, 6]
    for window, other in zip(windows, windows[::-1], strict=True):
        assert abs(np.linalg.norm(np.asarray(window, np.float32)) - 1) < 2e-3
        assert window != other  # two windows, two vectors
    schema = next(t.schema for t in tables if "embedding_backbone" in t.schema.names)
    assert str(schema.field("embedding_backbone").type) == "list<element: halffloat>"


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    """Three derived copies of one real clip, beside five unrelated real clips."""
    work = tmp_path_factory.mktemp("dedup")
    folder = work / "videos"
    folder.mkdir()
    small = ["-t", "2", "-an", "-c:v", "libx264", "-preset", "veryfast"]
    base = derive(clip("bikes"), work, ".mp4", *small, "-crf", "18")
    copies = {
        "bikes.mp4": base,
        "bikes_reencode.mp4": derive(base, work, ".mp4", "-vf", "scale=320:-2", "-crf", "36"),
        "bikes_crop.mp4": derive(base, work, ".mp4", "-vf", "crop=iw*0.8:ih*0.8"),
        "bikes_fast.mp4": derive(base, work, ".mp4", "-vf", "setpts=PTS/1.25", "-r", "25"),
    }
    for name in ("bunny", "carphone", "vtest", "megamind", "tree"):
        copies[f"{name}.mp4"] = derive(clip(name), work, ".mp4", *small, "-vf", "scale=-2:240")
    for name, path in copies.items():
        shutil.copy(path, folder / name)
    return folder


def test_dedup_finds_the_planted_copies_and_no_unrelated_pair(recipe, footage, tmp_path, capsys):
    out = tmp_path / "out"
    run(recipe, footage, out)
    index = (out / "embeddings" / "index-00000.jsonl").read_text().splitlines()
    assert len([e for e in map(json.loads, index) if "window" not in e]) == 9

    loaded = load(out)
    cos = loaded.vectors @ loaded.vectors.T
    at = {v: i for i, v in enumerate(loaded.ids)}
    print({v: round(float(cos[at["bikes.mp4"], i]), 4) for v, i in at.items()})
    for copy in ("bikes_reencode.mp4", "bikes_fast.mp4", "bikes_crop.mp4"):
        nearest = max((v for v in at if v != copy), key=lambda v: cos[at[copy], at[v]])
        assert nearest.startswith("bikes"), (copy, nearest)

    capsys.readouterr()
    assert main(["dedup", str(out), "--threshold", "0.95"]) == 0
    assert "3 pairs >= 0.95 in 1 groups; 2 to drop, 7 kept" in capsys.readouterr().out
    lines = (out / "dedup" / "pairs.jsonl").read_text().splitlines()
    planted = {"bikes.mp4", "bikes_reencode.mp4", "bikes_fast.mp4"}
    assert {frozenset((p["a"], p["b"])) for p in map(json.loads, lines)} == {
        frozenset(("bikes.mp4", "bikes_reencode.mp4")),
        frozenset(("bikes.mp4", "bikes_fast.mp4")),
        frozenset(("bikes_fast.mp4", "bikes_reencode.mp4")),
    }
    groups = [json.loads(g) for g in (out / "dedup" / "groups.jsonl").read_text().splitlines()]
    # the verdicts tie, so the longer video is kept: the 1.25x copy lasts 1.6 s, not 2 s
    assert len(groups) == 1 and {groups[0]["keep"], *groups[0]["drop"]} == planted
    assert "bikes_fast.mp4" in groups[0]["drop"]
    kept = (out / "dedup" / "keep.txt").read_text().split()
    assert sorted(kept) == sorted(set(loaded.ids) - set(groups[0]["drop"]))
