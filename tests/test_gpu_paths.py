"""The GPU claims, checked rather than run: frames stay on the device from NVDEC to the model
stage, NVDEC gives the frames the CPU routes give, and half precision keeps the backbone's
tokens. Tolerances are those of tests/test_frames.py (0..255 levels: mean under 2, 99th
percentile under 8); tokens must keep a cosine above 0.99 to float32's.

Most tests here need CUDA (`gpu`); the pointer and precision checks also run on the CPU, where
DALI's CPU decoder and float16/bfloat16 arithmetic stand in.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_engine import read_rows
from tests.test_frames import (
    MEAN_TOL,
    SAMPLING,
    assert_close,
    levels,
    plane_for,
    reference_clip,
    reference_frames,
)
from vqf.engine.assemble import ClipAssembler
from vqf.video import Roi

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
KINDS = {"whole", "segment", "inverse"}
CLIP_FRAME_BYTES = 3 * SAMPLING.height * SAMPLING.width * 2  # one FP16 frame of a clip
B_FRAMES = {"tune": "film", "x264-params": "bframes=3"}  # the default tune has none
# NVDEC refuses pictures under 144x144 for HEVC and 128x128 for VP9 (48x16 for H.264)
SIZE = dict(width=256, height=192)


# -- (a) no frame goes to the host between decode and the models -------------------------------
def memcpy_bytes(work, trace: Path) -> Counter:
    """Bytes of every CUDA memcpy in the process while `work()` runs, by kind (HtoD, DtoH,
    DtoD), from the torch profiler's CUPTI trace: DALI's copies are counted with torch's."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace))
    out: Counter = Counter()
    for event in json.loads(trace.read_text())["traceEvents"]:
        found = re.match(r"Memcpy (\w+)", str(event.get("name", "")))
        if found and event.get("ph") == "X":
            out[found.group(1)] += int((event.get("args") or {}).get("bytes", 0))
            out["copies"] += 1
    return out


def lane_pieces(plane, prepared) -> list:
    """What a decode lane does with a video: chunks from the graph into the clip assembler."""
    assembler = ClipAssembler(prepared.plan, kinds=KINDS)
    pieces = []
    for chunk in plane.stream(prepared):
        pieces += assembler.add(chunk.start, chunk.frames)
    assert assembler.pending == 0
    return pieces


@pytest.mark.gpu
def test_no_frame_is_copied_to_the_host_between_nvdec_and_the_clips(video_factory, tmp_path):
    path = video_factory(codec="h264", width=320, height=240, seconds=3, fps=10)
    plane = plane_for("cuda", chunk_frames=8)
    prepared = plane.prepare(path, uri=str(path))
    assert prepared.route == "nvdec"
    assert len(lane_pieces(plane, prepared)) > 1  # builds the pipeline outside the measurement
    # the measurement sees frames that do go to the host
    first = next(iter(plane.stream(prepared, roi=None))).frames
    control = memcpy_bytes(lambda: first.cpu(), tmp_path / "control.json")
    assert control["DtoH"] >= first.numel() * first.element_size(), control

    pieces: list = []
    got = memcpy_bytes(lambda: pieces.extend(lane_pieces(plane, prepared)), tmp_path / "lane.json")
    assert pieces and all(p.tensor.is_cuda for p in pieces)
    # frames bytes would be (frames x 11.5 kB); what crosses is under one frame's worth
    assert got["DtoH"] < CLIP_FRAME_BYTES, got
    assert got["HtoD"] > 0, got  # the trace did record this path's copies (clip indices)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_chunks_are_dali_buffers_and_clips_are_copies_on_the_same_device(
    video_factory, device, codec, monkeypatch
):
    """Each chunk is the DALI sample itself (torch.from_dlpack: same pointer, same shape);
    each clip buffer is torch's own memory on the same device, outside every DALI sample."""
    import vqf.video.decode as decode_module

    seen: list[tuple[int, int, object]] = []  # DALI's pointer, its bytes, the torch tensor
    real = decode_module.to_torch

    def spy(batch, index):
        tensor = real(batch, index)
        sample = batch[index]
        assert tuple(sample.shape()) == tuple(tensor.shape)
        seen.append((sample.data_ptr(), tensor.numel() * tensor.element_size(), tensor))
        return tensor

    monkeypatch.setattr(decode_module, "to_torch", spy)
    path = video_factory(codec=codec, **SIZE, seconds=3, fps=10)
    plane = plane_for(device, chunk_frames=8)
    prepared = plane.prepare(path, uri=str(path))
    if device == "cuda":
        assert prepared.route == "nvdec"
    else:
        assert prepared.route == {"vp9": "dali-cpu", "h264": "pyav"}[codec]
    assembler = ClipAssembler(prepared.plan, kinds=KINDS)
    pieces = []
    for chunk in plane.stream(prepared):
        ptr, _, _ = seen[-1]
        assert chunk.frames.data_ptr() == ptr  # no copy between DALI and the lane
        assert chunk.frames.device.type == device
        pieces += assembler.add(chunk.start, chunk.frames)
    assert len(seen) > 1 and pieces
    spans = [(ptr, ptr + size) for ptr, size, _ in seen]  # all alive: `seen` holds them
    for piece in pieces:
        assert piece.tensor.device.type == device
        lo = piece.tensor.data_ptr()
        hi = lo + piece.nbytes
        assert all(hi <= a or lo >= b for a, b in spans), "a clip aliases a DALI buffer"


# -- (b) NVDEC gives the CPU route's frames -----------------------------------------------------
ROUTE_CASES = {
    # name: (video keywords, route on CUDA). 10-bit HEVC goes to FFmpeg by routing (NVDEC is
    # given 8-bit 4:2:0 only) and its frames still pass through the GPU head.
    "h264_b_frames": (dict(codec="h264", options=B_FRAMES), "nvdec"),
    "hevc_8bit": (dict(codec="hevc"), "nvdec"),
    "hevc_10bit": (dict(codec="hevc", pix_fmt="yuv420p10le"), "pyav"),
    "vp9": (dict(codec="vp9"), "nvdec"),
    "mpeg4": (dict(codec="mpeg4"), "nvdec"),
    "h264_rotated_90": (dict(codec="h264", rotation=90), "nvdec"),
    "h264_rotated_270": (dict(codec="h264", rotation=270, options=B_FRAMES), "nvdec"),
    "vp9_rotated_180": (dict(codec="vp9", rotation=180), "nvdec"),
    "h264_vfr": (dict(codec="h264", vfr=True, options=B_FRAMES), "nvdec"),
    "vp9_vfr_rotated_90": (dict(codec="vp9", vfr=True, rotation=90), "nvdec"),
}


def has_b_frames(path) -> bool:
    import av
    from av.video.frame import PictureType

    with av.open(str(path)) as container:
        return any(f.pict_type == PictureType.B for f in container.decode(video=0))


def decode_on(device: str, path, *, roi: Roi | None = None, **decode):
    plane = plane_for(device, **decode)
    prepared = plane.prepare(path, uri=str(path))
    (decoded,) = plane.decode([prepared], rois=[roi])
    assert not isinstance(decoded, Exception), decoded
    return decoded


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(ROUTE_CASES))
def test_gpu_route_gives_the_cpu_route_frames(video_factory, case):
    keywords, route = ROUTE_CASES[case]
    path = video_factory(**SIZE, seconds=2, fps=10, **keywords)
    if keywords.get("options") is B_FRAMES:
        assert has_b_frames(path)
    gpu, cpu = decode_on("cuda", path), decode_on("cpu", path)
    assert gpu.route == route
    assert gpu.frames.is_cuda and gpu.frames.dtype == torch.float16
    assert gpu.frames.shape == cpu.frames.shape == (len(gpu.plan.frames), 3, 40, 48)
    assert np.array_equal(gpu.plan.frames, cpu.plan.frames)
    assert_close(gpu.frames, cpu.frames)
    assert_close(gpu.frames, reference_clip(reference_frames(path), gpu.plan.frames))


@pytest.mark.gpu
@pytest.mark.parametrize(("codec", "rotation"), [("h264", 90), ("vp9", 270), ("hevc", 0)])
def test_gpu_route_crops_the_region_of_interest_as_the_cpu_route(video_factory, codec, rotation):
    path = video_factory(codec=codec, **SIZE, seconds=2, rotation=rotation)
    roi = Roi(x0=0.25, y0=0.1, x1=0.9, y1=0.7)
    gpu, cpu = decode_on("cuda", path, roi=roi), decode_on("cpu", path, roi=roi)
    assert gpu.route == "nvdec"
    # the crop against torch's is tests/test_frames.py's (at 160x120: NVDEC takes no HEVC or
    # VP9 that small); here the GPU route must crop as the CPU route does
    inner = (..., slice(1, -1), slice(1, -1))  # DALI's filter reads a pixel past the edge
    assert_close(gpu.frames[inner], cpu.frames[inner])
    uncropped = decode_on("cpu", path)
    assert (levels(gpu.frames) - levels(uncropped.frames)).abs().mean() > 4 * MEAN_TOL


@pytest.mark.gpu
def test_nvdec_sessions_in_flight_give_each_video_its_frames_alone(video_factory):
    """Decode lanes as the rank runs them (a plane per thread, all in flight at once) return
    exactly what each video gives decoded on its own."""
    paths = [
        video_factory(codec=codec, **SIZE, seconds=3, fps=10, seed=10 + i)
        for i, codec in enumerate(("h264", "hevc", "vp9", "h264", "mpeg4", "h264"))
    ]

    def frames_of(plane, path):
        prepared = plane.prepare(path, uri=str(path))
        assert prepared.route == "nvdec"
        return torch.cat([c.frames for c in plane.stream(prepared)])

    alone_plane = plane_for("cuda", chunk_frames=8)
    alone = [frames_of(alone_plane, p) for p in paths]
    start = threading.Barrier(len(paths))

    def lane(path):
        plane = plane_for("cuda", chunk_frames=8)
        plane.warm_up()
        start.wait()
        out = frames_of(plane, path)
        torch.cuda.synchronize()
        return out

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        together = list(pool.map(lane, paths))
    for path, a, b in zip(paths, alone, together, strict=True):
        assert torch.equal(a, b), path.name


@pytest.mark.gpu
def test_one_rank_run_of_several_videos_scores_each_as_alone(video_factory, tmp_path):
    """The whole rank on CUDA: four videos with four decode lanes in flight, against the same
    videos one at a time through one lane. The models are pinned to fp32 (`auto` would be
    bf16, whose 8-bit mantissa moves scores by a few hundredths when other clips share a
    batch): what is left is kernels chosen by batch size (TF32 in cuDNN's patch convolution),
    so scores agree within 0.01; the frame filters' measures, from the same frames, as closely."""
    from vqf.config import load_recipe
    from vqf.engine.rank import Rank

    videos = {
        f"v{i}": video_factory(codec=codec, **SIZE, seconds=4, fps=10, seed=20 + i)
        for i, codec in enumerate(("h264", "hevc", "vp9", "h264"))
    }
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"video_id": k, "video_path": str(v)}) + "\n"
                             for k, v in videos.items()))  # fmt: skip
    runs = {}
    for lanes in (4, 1):
        out = tmp_path / f"lanes{lanes}"
        recipe = load_recipe(DEMO, overrides=[
            f"tables={table}", f"outputs={out}", "demo.generate=false", "engine.device=cuda",
            "filters.abnormal_region.enable=false", f"decode.pipelines={lanes}",
            "models.backbone.dtype=fp32", "models.rov_backbone.dtype=fp32",
        ])  # fmt: skip
        Rank(recipe, rank=0, world_size=1, device="cuda:0").run()
        runs[lanes] = rows_of(out)
    for vid in videos:
        many, one = runs[4][vid], runs[1][vid]
        assert many["result_info"]["succeed"] == one["result_info"]["succeed"] == "true"
        assert many["result_info"]["decode_route"] == "nvdec"
        a, b = leaves(many["info"]), leaves(one["info"])
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=0.01), (vid, key)
            else:
                assert value == b[key], (vid, key)

    # the videos score apart, so a clip handed to the wrong video could not pass the above
    numbers = {
        vid: {k: v for k, v in leaves(runs[1][vid]["info"]).items() if isinstance(v, float)}
        for vid in videos
    }
    for a, b in itertools.combinations(videos, 2):
        shared = numbers[a].keys() & numbers[b].keys()
        assert max(abs(numbers[a][k] - numbers[b][k]) for k in shared) > 0.05, (a, b)


@pytest.mark.gpu
def test_a_rank_on_the_second_gpu_scores_as_on_the_first(video_factory, tmp_path):
    """Every stage thread of a rank on cuda:1 works on cuda:1 (its clip-ready events on that
    GPU's streams): the rows equal those of the same rank on cuda:0."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from vqf.config import load_recipe
    from vqf.engine.rank import Rank

    videos = {
        f"v{i}": video_factory(codec=codec, **SIZE, seconds=4, fps=10, seed=40 + i)
        for i, codec in enumerate(("h264", "hevc", "h264"))
    }
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"video_id": k, "video_path": str(v)}) + "\n"
                             for k, v in videos.items()))  # fmt: skip
    runs = {}
    for device in ("cuda:1", "cuda:0"):
        out = tmp_path / device.replace(":", "")
        recipe = load_recipe(DEMO, overrides=[
            f"tables={table}", f"outputs={out}", "demo.generate=false", "engine.device=cuda",
            "filters.abnormal_region.enable=false", "decode.pipelines=3",
            "models.backbone.dtype=fp32", "models.rov_backbone.dtype=fp32",
        ])  # fmt: skip
        Rank(recipe, rank=0, world_size=1, device=device).run()
        runs[device] = rows_of(out)
    for vid in videos:
        a, b = leaves(runs["cuda:1"][vid]["info"]), leaves(runs["cuda:0"][vid]["info"])
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=0.01), (vid, key)


def rows_of(out: Path) -> dict[str, dict]:
    """The output rows by video_id."""
    return {r["video_id"]: r for r in read_rows(out)}


def leaves(value, prefix: str = "") -> dict[str, object]:
    """A nested row as {path: value}; numbers as float so that 1 and 1.0 compare."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(leaves(v, f"{prefix}/{k}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(leaves(v, f"{prefix}[{i}]"))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {prefix: value}


# -- (c) half precision keeps the tokens --------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_tokens_are_finite_and_close_to_float32(device, dtype):
    from vqf.models.backbone import Backbone, random_backbone_model

    where = "cuda:0" if device == "cuda" else "cpu"
    backbones = {
        d: Backbone(
            name=str(d),
            model=random_backbone_model("tiny", crop_size=64, device=where, dtype=d, seed=7),
            device=torch.device(where),
            dtype=d,
        )
        for d in (torch.float32, dtype)
    }
    clips = torch.randn(2, 8, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(where)
    want = backbones[torch.float32].encode(clips)
    got = backbones[dtype].encode(clips)
    assert got.dtype == dtype and got.shape == want.shape == (2, 4 * 4 * 4, 64)
    assert torch.isfinite(got).all()
    cosine = F.cosine_similarity(got.float(), want, dim=-1)
    assert cosine.min().item() > 0.99, cosine.min().item()
    # and it is a comparison that can fail: other weights give other tokens
    other = random_backbone_model("tiny", crop_size=64, device=where, dtype=dtype, seed=8)
    moved = Backbone(name="other", model=other, device=torch.device(where), dtype=dtype)
    assert F.cosine_similarity(moved.encode(clips).float(), want, dim=-1).mean() < 0.9


# -- (d) weight-free measures on the frames' own device ----------------------------------------
def test_sharpness_finds_an_upscale_and_a_blur_on_the_frames_device(device):
    """Frames enlarged 2.5x by torch's bicubic (a kernel the grid fit does not model) read 2.5;
    the same detail blurred instead reads 1.0, with about the same `detail`; on CUDA, the
    numbers are the CPU's."""
    from vqf.config import FilterConfig
    from vqf.filters.sharpness import SharpnessFilter

    small = torch.rand(6, 3, 72, 128, generator=torch.Generator().manual_seed(3))
    up = F.interpolate(small, size=(180, 320), mode="bicubic", align_corners=False)
    noise = torch.rand(6, 3, 180, 320, generator=torch.Generator().manual_seed(4))
    blurred = F.avg_pool2d(F.pad(noise, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    blurred = (blurred - blurred.mean()) * (up.std() / blurred.std()) + 0.5
    sharp = SharpnessFilter(spec=FilterConfig())

    def measured(frames, where):
        rgb = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return sharp.measure(rgb.contiguous().to(where)).info["sharpness"]

    got = {name: measured(f, device) for name, f in (("up", up), ("blurred", blurred))}
    assert got["up"]["upscale"] == 2.5 and got["blurred"]["upscale"] == 1.0, got
    assert got["up"]["detail"] < 0.6 and got["blurred"]["detail"] < 0.6, got
    if device == "cuda":
        on_cpu = {name: measured(f, "cpu") for name, f in (("up", up), ("blurred", blurred))}
        for name in got:
            assert got[name]["upscale"] == on_cpu[name]["upscale"], (name, got, on_cpu)
            assert got[name]["detail"] == pytest.approx(on_cpu[name]["detail"], abs=0.02)
            assert got[name]["score"] == pytest.approx(on_cpu[name]["score"], rel=1e-3)
