"""The profiler: floors arithmetic, the per-stage table and bottleneck, the trace, a real run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from vqf.bench.floors import VideoLoad, clip_flops, compute_floors, nvdec_engines, tokens_per_clip
from vqf.bench.profile import format_report
from vqf.bench.trace import bottleneck, chrome_trace, queue_waits, stage_rows

H100 = "NVIDIA H100 80GB HBM3"


def vit_l_clip_flops(frames: int = 48) -> float:
    tokens = tokens_per_clip(frames=frames, height=256, width=256)
    return clip_flops(hidden=1024, layers=24, mlp_ratio=4.0, tokens=tokens)


def seed_video(**kw) -> VideoLoad:
    """DESIGN.md section 8: 20 s 1080p30 H.264, 600 frames, 14 ViT-L clips of 48x256x256."""
    values = dict(
        codec="h264",
        width=1920,
        height=1080,
        frames_decoded=600,
        duration_s=20.0,
        flops=14 * vit_l_clip_flops(),
    )
    values.update(kw)
    return VideoLoad(**values)


def test_floors_reproduce_the_design_numbers():
    assert tokens_per_clip(frames=48, height=256, width=256) == 6144
    assert vit_l_clip_flops() / 1e12 == pytest.approx(7.4, rel=0.01)
    floors = compute_floors([seed_video()], gpu_name=H100)
    assert floors.nvdec_engines == 7
    assert floors.decode_fps == pytest.approx(7 * 771)
    assert floors.decode_videos_per_s == pytest.approx(9.0, rel=0.01)
    assert floors.tflop_per_video == pytest.approx(104, rel=0.01)
    assert floors.model_videos_per_s == pytest.approx(7.6, rel=0.01)
    assert floors.binding[0] == "model"


def test_decode_floor_follows_codec_and_frame_size():
    base = compute_floors([seed_video()], gpu_name=H100).decode_videos_per_s
    hevc = compute_floors([seed_video(codec="hevc")], gpu_name=H100).decode_videos_per_s
    uhd = compute_floors([seed_video(width=3840, height=2160)], gpu_name=H100).decode_videos_per_s
    assert hevc == pytest.approx(1.7 * base)
    assert uhd == pytest.approx(base / 4)
    mixed = compute_floors([seed_video(), seed_video(codec="hevc")], gpu_name=H100)
    # two videos in the time of one H.264 and one HEVC video
    assert mixed.decode_videos_per_s == pytest.approx(2 / (1 / base + 1 / hevc))


def test_gpus_are_told_apart_by_name_and_unknown_ones_give_no_floor():
    assert nvdec_engines("NVIDIA A100-SXM4-80GB") == 5
    assert nvdec_engines("NVIDIA A10") == 2
    assert nvdec_engines("NVIDIA L40S") == 3
    assert nvdec_engines("NVIDIA GeForce GTX 1080") is None
    unknown = compute_floors([seed_video()], gpu_name="NVIDIA GeForce GTX 1080")
    assert unknown.decode_videos_per_s is None and unknown.model_videos_per_s is None
    assert unknown.binding is None
    given = compute_floors(
        [seed_video()], gpu_name="NVIDIA GeForce GTX 1080", engines=2, peak_tflops=100.0
    )
    assert given.binding[0] == "model" and given.binding[1] == pytest.approx(100 / 104, rel=0.01)


def synthetic_spans() -> list[tuple[str, str, float, float]]:
    """Two videos through a pipeline whose model stage dominates (times in seconds)."""
    return [
        ("fetch", "v1", 0.0, 0.1),
        ("fetch", "v2", 0.0, 0.2),
        ("probe", "v1", 0.1, 0.2),
        ("probe", "v2", 0.2, 0.3),
        ("decode", "v1,v2", 0.5, 1.0),
        ("model", "v1,v2", 1.0, 9.0),
        ("backbone:vjepa", "", 1.0, 7.0),
        ("head:simcam", "", 7.0, 8.0),
        ("write", "v1,v2", 9.5, 10.0),
    ]


def test_stage_table_and_bottleneck_sentence():
    rows = {r.stage: r for r in stage_rows(synthetic_spans(), threads={"fetch": 2, "probe": 2})}
    assert list(rows) == [
        "fetch",
        "probe",
        "decode",
        "model",
        "backbone:vjepa",
        "head:simcam",
        "write",
    ]
    model = rows["model"]
    assert model.seconds == pytest.approx(8.0) and model.busy == pytest.approx(0.8)
    assert model.items == 2 and model.items_per_s == pytest.approx(0.25)
    assert rows["fetch"].busy == pytest.approx(0.3 / 20)  # two fetch threads over 10 s
    assert rows["backbone:vjepa"].parent == "model"
    assert rows["backbone:vjepa"].share == pytest.approx(6 / 8)
    assert rows["decode"].wait_s == pytest.approx((0.3 + 0.2) / 2)  # probe end -> decode start
    assert rows["write"].wait_s == pytest.approx(0.5)
    assert rows["fetch"].wait_s is None
    sentence = bottleneck(list(rows.values()))
    assert sentence.startswith("The bottleneck is model: busy 80%")
    assert "backbone:vjepa takes 75% of its time" in sentence
    assert bottleneck([]) == "No stage ran, so there is no bottleneck to name."


def test_queue_waits_ignore_nested_stages():
    waits = queue_waits(synthetic_spans())
    assert set(waits) == {"probe", "decode", "model", "write"}
    assert waits["model"] == pytest.approx(0.0)


def test_chrome_trace_has_a_track_per_stage_and_lanes_for_overlaps():
    trace = chrome_trace(
        {0: synthetic_spans(), 1: [("decode", "v3", 2.0, 3.0)]}, devices={0: "cuda:0", 1: "cuda:1"}
    )
    events = trace["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == len(synthetic_spans()) + 1
    tracks = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert set(tracks.values()) >= {"fetch", "fetch #2", "probe", "decode", "model", "write"}
    fetches = [e for e in spans if e["cat"] == "fetch"]
    assert len({e["tid"] for e in fetches}) == 2  # the two overlapping fetches
    batch = next(e for e in spans if e["cat"] == "decode" and e["pid"] == 0)
    assert batch["name"] == "decode x2" and batch["args"]["videos"] == ["v1", "v2"]
    assert batch["ts"] == pytest.approx(0.5e6) and batch["dur"] == pytest.approx(0.5e6)
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {0: "rank 0 (cuda:0)", 1: "rank 1 (cuda:1)"}


def test_report_puts_achieved_next_to_the_floors():
    floors = compute_floors([seed_video()], gpu_name=H100)
    result = {
        "recipe": "seed",
        "device": "cuda:0",
        "rows": 8,
        "succeeded": 8,
        "processing_s": 2.1,
        "wall_s": 9.0,
        "videos_per_s": floors.model_videos_per_s / 2,
        "stages": [],
        "bottleneck": "The bottleneck is model.",
        "gpu": None,
        "baseline": None,
        "workload": {
            "videos": 8,
            "frames_decoded_per_video": 600,
            "tflop_per_video": 104.2,
            "tflop_per_video_one_backbone_per_filter": 200.0,
        },
        "floors": {**asdict(floors), "binding": floors.binding},
        "trace": "trace.json",
    }
    report = format_report(result)
    assert "floors on NVIDIA H100 80GB HBM3: decode 8.99 videos/s (7 NVDEC x 771 fps)" in report
    assert "model 7.58 videos/s (104 TFLOP per video at 790 TFLOP/s)" in report
    assert "achieved 3.79 videos/s = 50% of the model floor" in report


RECIPE = """
name: profile_test
sampling: {whole_frames: 8, window_frames: 8, height: 32, width: 32}
decode: {route: auto, batch_size: 2, workers: 2}
models:
  backbone: {kind: vjepa2, size: tiny, init: random}
  rov_backbone: {kind: vjepa2, size: tiny, init: random}
filters:
  vfx: {enable: true}
  simcam: {enable: true}
  rov: {enable: true}
engine: {clip_batch: 8}
"""


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    from vqf.video.synth import make_video

    folder = tmp_path_factory.mktemp("profile")
    rows = []
    for i in range(3):
        path = folder / f"v{i}.mp4"
        make_video(path, codec="h264", width=64, height=48, seconds=2.0, fps=10, seed=i)
        rows.append(
            {
                "video_id": f"v{i}",
                "oss_bucket": "",
                "video_path": str(path),
                "video_tag": "t",
                "info": "{}",
            }
        )
    table = folder / "input.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE + f"tables: {table}\noutputs: {folder / 'unused'}\n")
    return recipe, folder


def test_profile_runs_the_pipeline_and_writes_trace_and_summary(sample, device, capsys):
    from vqf.bench.profile import main

    recipe, folder = sample
    out = folder / f"prof-{device}"
    args = [str(recipe), "--videos", "2", "--out", str(out), "--baseline"]
    assert main([*args, "--set", f"engine.device={device}"]) == 0
    report = capsys.readouterr().out

    trace = json.loads((out / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {"fetch", "probe", "decode", "model", "write"} <= {e["cat"] for e in spans}
    assert {v for e in spans for v in e["args"].get("videos", [])} == {"v0", "v1"}

    summary = json.loads((out / "profile.json").read_text())
    assert summary["rows"] == 2 and summary["succeeded"] == 2  # --videos 2 of 3 rows
    stages = {s["stage"] for s in summary["stages"]}
    assert {"fetch", "probe", "decode", "model", "write"} <= stages
    named = summary["bottleneck"].removeprefix("The bottleneck is ").split(":")[0]
    assert named in stages
    assert summary["bottleneck"] in report
    # 2 s at 10 fps: the whole clip's samples run from the first frame to (nearly) the last
    assert 15 <= summary["workload"]["frames_decoded_per_video"] <= 20
    # rov has a backbone of its own, vfx and simcam share one: one backbone per filter costs more
    workload = summary["workload"]
    assert workload["tflop_per_video_one_backbone_per_filter"] > workload["tflop_per_video"] > 0
    if device == "cpu":
        assert summary["floors"] is None and "computed on a GPU only" in report
    else:
        assert summary["floors"]["tflop_per_video"] == pytest.approx(workload["tflop_per_video"])
        assert f"floors on {summary['floors']['gpu']}" in report
    # each backbone's precision and its first-batch finite check
    dtype = "fp32" if device == "cpu" else summary["precision"]["backbone"]["dtype"]
    assert summary["precision"] == {
        name: {"dtype": dtype, "finite": True} for name in ("backbone", "rov_backbone")
    }
    assert f"precision: backbone {dtype} (finite), rov_backbone {dtype} (finite)" in report
    assert summary["baseline"]["succeeded"] == 2 and summary["baseline"]["speedup"] > 0
    assert summary["baseline"]["finished_s"] == sorted(summary["baseline"]["finished_s"])
    assert len(summary["baseline"]["finished_s"]) == 2
    assert "baseline (the seed's design" in report
    # on CUDA the model stage waits for the GPU after each backbone call: said at the figure
    assert summary["synchronised"] is (device == "cuda")
    assert ("a lower bound: profiling waits for the GPU" in report) is (device == "cuda")
    assert format_report(summary) == report.rstrip("\n")


def test_profile_refuses_zero_videos(sample, capsys):
    from vqf.bench.profile import main

    recipe, folder = sample
    assert main([str(recipe), "--videos", "0", "--out", str(folder / "p0")]) == 2
    assert "--videos 0" in capsys.readouterr().err


def test_bench_engine_prints_the_cost_of_each_added_minute():
    """Start-up cancels out of the slope between two lengths; a rising slope is printed as a
    ratio over the first step, so a cost growing with length shows."""
    from vqf.bench.engine import marginal

    runs = [
        {"codec": "vp9", "minutes": 1.0, "seconds": 14.0},
        {"codec": "vp9", "minutes": 10.0, "seconds": 77.0},
        {"codec": "vp9", "minutes": 30.0, "seconds": 357.0},
    ]
    lines = marginal(runs)
    assert lines == [
        "vp9 1 -> 10 min: 7.00 s per added minute",
        "vp9 10 -> 30 min: 14.00 s per added minute = 2.00x the first step",
    ]
    assert marginal(runs[:1]) == []
