"""The bad-input corpus through one `vqf run`: every row ends as exactly one row of the right
type, and the run goes on. A probe that hangs is bounded by decode.timeout_s."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.corpus import OK, build_corpus, write_table
from tests.test_engine import DEMO, read_rows, vqf

LEARNED_KEYS = ("vfx_filter", "simcam_filter", "seg_simcam_filter", "rotate_vertical_filter")
SMALL = [
    "--set", "sampling.whole_frames=4", "--set", "sampling.window_frames=4",
    "--set", "sampling.height=32", "--set", "sampling.width=32",
    "--set", "sampling.detect_size=64", "--set", "decode.batch_size=4",
    "--set", "demo.generate=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(root / "data")
    (root / "outside.mp4").write_bytes(b"not reachable")  # what escape_dotdot aims at
    table = write_table(cases, root / "input.jsonl")
    out = root / "results"
    result = vqf(
        "run", str(DEMO), "--tables", str(table), "--outputs", str(out),
        "--set", f"storage.local_root={root / 'data'}", *SMALL, cwd=root,
    )  # fmt: skip
    return cases, table, out, result


def test_every_bad_input_ends_as_one_row_of_the_right_type(corpus_run):
    cases, table, out, result = corpus_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert len({c.kind for c in cases}) >= 25
    rows = read_rows(out)
    ids = [c.row.get("video_id", "") for c in cases] + [""]  # + the line that is not JSON
    assert Counter(r["result_info"]["row"] for r in rows) == Counter(range(len(ids)))
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["video_id"], []).append(r)

    wrong = {}
    for case in cases:
        if case.kind in ("dup_id", "row_missing_id"):
            continue  # several rows share these ids: checked below
        (row,) = by_id[case.row["video_id"]]
        got = _outcome(row)
        if got != case.expect:
            wrong[case.kind] = (case.expect, got, row["result_info"].get("error"))
    assert not wrong, wrong

    dup = sorted(_outcome(r) for r in by_id["dup_id"])
    assert dup == ["duplicate_row", OK]
    no_id = sorted(_outcome(r) for r in by_id[""])
    assert no_id == ["row_malformed", "row_malformed"]  # the row without an id, the non-JSON line


def test_failure_rows_say_where_and_successes_carry_every_filter(corpus_run):
    cases, table, out, _ = corpus_run
    rows = read_rows(out)
    routes = expected_routes(cases, data=table.parent / "data")
    stages = {
        "row_malformed": ("table",), "duplicate_row": ("table",), "path_refused": ("fetch",),
        "not_found": ("fetch",), "not_a_video": ("probe",), "corrupt_stream": ("probe",),
        "too_large": ("probe",), "unsupported_codec": ("probe",),
        "decode_failed": ("decode", "detect"),
    }  # fmt: skip
    for row in rows:
        ri = row["result_info"]
        if ri["succeed"] == "true":
            assert all(k in row["info"] for k in LEARNED_KEYS), row["video_id"]
            assert ri["decode_route"] in routes[row["video_id"]], ri
            continue
        error = ri["error"]
        assert error["message"], row
        assert error["stage"] in stages[error["type"]], (row["video_id"], error)
    by_id = {r["video_id"]: r for r in rows}
    # the header's 11 days are not believed: the segments follow the packets (1 s)
    segs = by_id["huge_declared_duration"]["info"]["seg_simcam_filter"]
    assert len(segs) == 1 and segs["0"]["duration"][1] == pytest.approx(1.0, abs=0.15)
    # the 1.5 s hole of the variable frame rate video is inside its 3.5 s, not the end of it
    vfr = by_id["vfr_with_gaps"]["info"]["seg_simcam_filter"]
    assert max(s["duration"][1] for s in vfr.values()) == pytest.approx(3.5, abs=0.15)
    assert by_id["name_with_spaces_unicode"]["video_oss_url"].endswith("视频.mp4")


def expected_routes(cases, *, data: Path) -> dict[str, set[str]]:
    """Per video_id of a good file, the routes its row may name on the run's device (`vqf run`
    picks CUDA when there is one): what routing decides, or FFmpeg after an NVDEC refusal."""
    from tests.conftest import cuda_available
    from vqf.video.probe import probe

    device = "cuda:0" if cuda_available() else "cpu"
    out = {}
    for case in cases:
        if case.expect != OK or "video_id" not in case.row:
            continue
        route = probe(data / case.row["video_path"], device=device).route
        out[case.row["video_id"]] = {route, "pyav"} if route == "nvdec" else {route}
    return out


def _outcome(row: dict) -> str:
    ri = row["result_info"]
    return OK if ri["succeed"] == "true" else ri["error"]["type"]


def run_with_one_stuck_video(tmp_path, good: Path, overrides: list[str]) -> tuple[dict, dict]:
    """Runs a Rank in-process over three good videos and `stuck.mp4` (whatever the caller made
    block on it); returns each row's result_info by video_id, and the rank's final snapshot."""
    from vqf.config import load_recipe
    from vqf.engine.rank import Rank

    stuck = tmp_path / "stuck.mp4"
    stuck.write_bytes(good.read_bytes())
    rows = [{"video_id": f"v{i}", "video_path": str(good)} for i in range(3)]
    rows.insert(1, {"video_id": "stuck", "video_path": str(stuck)})
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    recipe = load_recipe(
        DEMO,
        overrides=[
            f"tables={table}", f"outputs={out}",
            *[s for s in SMALL if s != "--set"],
            "filters.abnormal_region.enable=false", "filters.rov.enable=false", *overrides,
        ],
    )  # fmt: skip
    finished = {}
    runner = threading.Thread(
        target=lambda: finished.update(snap=Rank(recipe, rank=0, world_size=1, device="cpu").run()),
        daemon=True,
    )
    runner.start()
    runner.join(timeout=180)
    assert not runner.is_alive(), "the run hung on the stuck video"
    return {r["video_id"]: r["result_info"] for r in read_rows(out)}, finished["snap"]


def test_a_probe_that_hangs_becomes_a_timeout_row_and_the_run_finishes(
    tmp_path, video_factory, monkeypatch
):
    """A read that never returns (a stuck FUSE mount, a decoder spinning on a crafted file) is
    made here by a probe that blocks on one file until the test ends. The rank must write a
    TIMEOUT row for it after decode.timeout_s and judge the other videos."""
    import vqf.video.plane as plane_module

    release = threading.Event()
    real_probe = plane_module.probe

    def probe(path, **kwargs):
        if Path(path).name == "stuck.mp4":
            release.wait()  # never set before the run ends
        return real_probe(path, **kwargs)

    monkeypatch.setattr(plane_module, "probe", probe)
    try:
        got, snap = run_with_one_stuck_video(
            tmp_path, video_factory(codec="h264", seconds=1),
            ["decode.timeout_s=4", "decode.workers=1"],
        )  # fmt: skip
    finally:
        release.set()
    assert sorted(got) == ["stuck", "v0", "v1", "v2"]
    assert got["stuck"]["error"]["type"] == "timeout" and got["stuck"]["error"]["stage"] == "probe"
    assert all(got[f"v{i}"]["succeed"] == "true" for i in range(3))
    assert snap["counters"]["probe_timeouts"] == 1


def test_a_decode_that_hangs_becomes_a_timeout_row_and_the_run_finishes(
    tmp_path, video_factory, monkeypatch
):
    """The decoder itself stuck on one file (made here by a decode stream that blocks on that
    file): after decode.timeout_s without progress its lane is abandoned, the stuck video gets
    a TIMEOUT row at the decode stage, a fresh lane takes over and the others succeed."""
    import vqf.video.plane as plane_module

    release = threading.Event()
    real_stream = plane_module.VideoPlane.stream

    def stream(self, prepared, **kwargs):
        if Path(prepared.path).name == "stuck.mp4":
            release.wait()  # never set before the run ends
        return real_stream(self, prepared, **kwargs)

    monkeypatch.setattr(plane_module.VideoPlane, "stream", stream)
    try:
        got, snap = run_with_one_stuck_video(
            tmp_path, video_factory(codec="h264", seconds=1),
            ["decode.timeout_s=4", "decode.batch_size=2"],
        )  # fmt: skip
    finally:
        release.set()
    assert sorted(got) == ["stuck", "v0", "v1", "v2"]
    assert got["stuck"]["error"]["type"] == "timeout" and got["stuck"]["error"]["stage"] == "decode"
    assert all(got[f"v{i}"]["succeed"] == "true" for i in range(3))
    assert snap["counters"]["decode_timeouts"] >= 1
