"""Decoded frames: every route gives, for the same plan, what an independent PyAV decode gives.

Tolerance, in 0..255 levels after undoing the normalisation: mean absolute difference under 2
and 99th percentile under 8. Colour conversion and antialiasing differ slightly between
FFmpeg+torch and DALI; a neighbouring frame of these test videos differs by about 25.
With `decode.prescale` on, the pyav route lets swscale shrink frames first, and sharp edges
of these synthetic pictures move by up to a pixel: mean under 2.5, 99th percentile under 15.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqf.config import DecodeConfig, Recipe, SamplingConfig
from vqf.errors import VideoError
from vqf.video import Roi, VideoPlane
from vqf.video.graph import LETTERBOX_FILL
from vqf.video.synth import MARKER

SAMPLING = SamplingConfig(height=40, width=48, whole_frames=8, window_frames=8, detect_size=64)
MEAN_TOL, P99_TOL = 2.0, 8.0


def plane_for(device: str, **decode) -> VideoPlane:
    decode.setdefault("prescale", 0.0)
    recipe = Recipe(sampling=SAMPLING, decode=DecodeConfig(**decode))
    return VideoPlane(recipe=recipe, device="cuda:0" if device == "cuda" else device)


def reference_frames(path) -> list[np.ndarray]:
    """Every frame, decoded by PyAV and turned upright as a player shows it."""
    import av

    with av.open(str(path)) as container:
        return [
            np.rot90(f.to_ndarray(format="rgb24"), f.rotation // 90)
            for f in container.decode(video=0)
        ]


def reference_clip(frames, indices, *, roi: Roi | None = None) -> torch.Tensor:
    """Crop, resize (bilinear, antialiased) and normalise with torch: (N, 3, H, W) float32."""
    out = []
    for i in indices:
        a = frames[i]
        if roi is not None:
            h, w = a.shape[:2]
            a = a[round(roi.y0 * h) : round(roi.y1 * h), round(roi.x0 * w) : round(roi.x1 * w)]
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
        size = (SAMPLING.height, SAMPLING.width)
        out.append(F.interpolate(t, size=size, mode="bilinear", antialias=True)[0])
    return normalise(torch.stack(out))


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(SAMPLING.mean)[:, None, None]
    std = torch.tensor(SAMPLING.std)[:, None, None]
    return (x / 255 - mean) / std


def levels(x: torch.Tensor) -> torch.Tensor:
    """Undoes the normalisation: 0..255 RGB, float32 on the CPU."""
    std = torch.tensor(SAMPLING.std)[:, None, None]
    mean = torch.tensor(SAMPLING.mean)[:, None, None]
    return (x.float().cpu() * std + mean) * 255


def assert_close(
    got: torch.Tensor, want: torch.Tensor, *, mean_tol=MEAN_TOL, p99_tol=P99_TOL
) -> None:
    diff = (levels(got) - levels(want)).abs()
    mean, p99 = diff.mean().item(), diff.flatten().quantile(0.99).item()
    assert mean < mean_tol and p99 < p99_tol, f"mean {mean:.2f}, p99 {p99:.2f} levels"


CASES = [
    # codec, container, rotation, pixel format, vfr, route on the CPU, routes on CUDA
    # (vqf.video.probe.choose_route: NVDEC takes 8-bit 4:2:0 only, so 4:2:2 MJPEG stays on
    # DALI's CPU decoder and moves to the GPU for the head; whether Hopper's NVDEC takes
    # 4:2:0 MJPEG through DALI is not confirmed, so that case accepts NVDEC or, after a refusal,
    # the CPU route the engine falls back to, and records which)
    ("vp9", "webm", 0, None, False, "dali-cpu", ("nvdec",)),
    ("vp9", "webm", 90, None, True, "dali-cpu", ("nvdec",)),
    ("mjpeg", "mkv", 270, None, False, "dali-cpu", ("nvdec", "pyav")),
    ("mjpeg", "avi", 0, "yuvj422p", False, "dali-cpu", ("dali-cpu",)),
    ("h264", "mp4", 90, None, True, "pyav", ("nvdec",)),
    ("hevc", "mp4", 0, None, False, "pyav", ("nvdec",)),
    ("mpeg4", "mp4", 180, None, False, "pyav", ("nvdec",)),
]
# NVDEC refuses HEVC under 144x144 and VP9 under 128x128 (vqf.video.probe.NVDEC_LIMITS): CUDA
# cases use a size every codec takes there; the CPU keeps the cheaper one.
SIZES = {"cpu": dict(width=160, height=120), "cuda": dict(width=256, height=192)}


@pytest.mark.parametrize(
    ("codec", "suffix", "rotation", "pix_fmt", "vfr", "cpu_route", "cuda_routes"), CASES
)
def test_route_matches_pyav_reference(
    video_factory,
    device,
    record_property,
    codec,
    suffix,
    rotation,
    pix_fmt,
    vfr,
    cpu_route,
    cuda_routes,
):
    path = video_factory(
        codec=codec,
        suffix=suffix,
        seconds=2,
        rotation=rotation,
        pix_fmt=pix_fmt,
        vfr=vfr,
        **SIZES[device],
    )
    plane = plane_for(device)
    prepared = plane.prepare(path, uri=str(path))
    (decoded,) = plane.decode([prepared])
    if isinstance(decoded, VideoError) and "pyav" in cuda_routes:
        print(f"NVDEC refused {codec}: {decoded.message}")  # the engine's fallback, as it runs
        prepared = prepared.on_cpu(f"nvdec failed: {decoded.message}")
        (decoded,) = plane.decode([prepared])
    record_property("route", decoded.route)  # in the JUnit report: which route took it
    print(f"{codec} {suffix} on {device}: route {decoded.route} ({prepared.info.route_reason})")
    assert decoded.route in (cuda_routes if device == "cuda" else (cpu_route,))
    assert decoded.frames.shape == (len(prepared.plan.frames), 3, 40, 48)
    assert decoded.frames.device.type == device
    assert decoded.frames.dtype == (torch.float16 if device == "cuda" else torch.float32)
    frames = reference_frames(path)
    assert_close(decoded.frames, reference_clip(frames, prepared.plan.frames))
    # the comparison can tell neighbours apart: one frame off is far outside the tolerance
    shifted = reference_clip(frames, np.minimum(prepared.plan.frames + 1, len(frames) - 1))
    assert (levels(decoded.frames) - levels(shifted)).abs().mean() > 4 * MEAN_TOL


@pytest.mark.parametrize(("codec", "rotation"), [("vp9", 90), ("h264", 270), ("mjpeg", 0)])
def test_region_of_interest_is_cropped_in_the_displayed_frame(video_factory, codec, rotation):
    path = video_factory(codec=codec, width=160, height=120, seconds=1, rotation=rotation)
    plane = plane_for("cpu")
    prepared = plane.prepare(path, uri=str(path))
    roi = Roi(x0=0.25, y0=0.1, x1=0.9, y1=0.7)
    (decoded,) = plane.decode([prepared], rois=[roi])
    want = reference_clip(reference_frames(path), prepared.plan.frames, roi=roi)
    # DALI's filter reads a pixel past the ROI's edge, torch's crop cannot: compare inside
    assert_close(decoded.frames[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1])


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotation_is_applied_as_a_player_would(video_factory, rotation):
    path = video_factory(codec="vp9", width=96, height=72, seconds=1, rotation=rotation)
    plane = plane_for("cpu")
    (decoded,) = plane.decode([plane.prepare(path, uri=str(path))])
    pixels = levels(decoded.frames)
    # the red marker drawn in the displayed picture's top-left corner is there, upright
    corner = pixels[:, :, :2, :2].mean(dim=(0, 2, 3))
    assert torch.allclose(corner, torch.tensor(MARKER, dtype=torch.float32), atol=30)
    assert pixels[:, 0, -3:, -3:].mean() < 150  # and not in the opposite corner


@pytest.mark.parametrize("roi", [None, Roi(x0=0.25, y0=0.1, x1=0.9, y1=0.7)])
@pytest.mark.parametrize("prescale", [1.0, 2.0])
def test_pyav_prescale_stays_close_to_the_reference(video_factory, roi, prescale):
    """At 1 (the default) swscale makes the clip itself and the graph only normalises (and
    crops a region of interest); at 2 the graph's antialiased resize does the last step."""
    path = video_factory(codec="h264", width=320, height=240, seconds=1, rotation=90)
    plane = plane_for("cpu", prescale=prescale)
    prepared = plane.prepare(path, uri=str(path))
    (decoded,) = plane.decode([prepared], rois=[roi])
    want = reference_clip(reference_frames(path), prepared.plan.frames, roi=roi)
    inner = (..., slice(1, -1), slice(1, -1))
    assert_close(decoded.frames[inner], want[inner], mean_tol=2.5, p99_tol=15.0)


def test_dali_cpu_and_pyav_routes_agree(video_factory):
    path = video_factory(codec="vp9", width=160, height=120, seconds=2, vfr=True)
    dali, pyav = plane_for("cpu"), plane_for("cpu", route="pyav")
    (a,) = dali.decode([dali.prepare(path, uri="a")])
    (b,) = pyav.decode([pyav.prepare(path, uri="b")])
    assert (a.route, b.route) == ("dali-cpu", "pyav")
    assert_close(a.frames, b.frames)


def test_clips_gather_from_the_union(video_factory):
    path = video_factory(codec="h264", width=64, height=48, seconds=8, fps=5)
    plane = plane_for("cpu")
    (decoded,) = plane.decode([plane.prepare(path, uri=str(path))])
    plan = decoded.plan
    segment, inverse = plan.clips_of("segment")[1], plan.clips_of("inverse")[1]
    clip = decoded.clip_tensor(segment)
    assert clip.shape == (8, 3, 40, 48)
    want = reference_clip(reference_frames(path), plan.frame_indices(segment))
    assert_close(clip, want)
    assert torch.equal(decoded.clip_tensor(inverse), clip.flip(0))


def test_pyav_chunks_do_not_change_frames(video_factory):
    path = video_factory(codec="h264", width=64, height=48, seconds=3)
    small, large = plane_for("cpu", chunk_frames=3), plane_for("cpu", chunk_frames=64)
    (a,) = small.decode([small.prepare(path, uri="a")])
    (b,) = large.decode([large.prepare(path, uri="b")])
    assert len(a.plan.frames) > 3
    assert torch.equal(a.frames, b.frames)


def test_mixed_batch_equals_videos_decoded_alone(video_factory):
    paths = [
        video_factory(codec="vp9", seconds=2, seed=1),
        video_factory(codec="h264", seconds=2, seed=2),
        video_factory(codec="mjpeg", seconds=1, seed=3),
        video_factory(codec="hevc", seconds=1, seed=4),
    ]
    plane = plane_for("cpu", batch_size=2)
    prepared = [plane.prepare(p, uri=str(p)) for p in paths]
    together = plane.decode(prepared)
    for prep, got in zip(prepared, together, strict=True):
        (alone,) = plane.decode([prep])
        assert got.info.path == prep.info.path
        assert torch.equal(got.frames, alone.frames)


@pytest.mark.parametrize(("codec", "rotation"), [("vp9", 90), ("h264", 0)])
def test_detection_frames_are_letterboxed(video_factory, device, codec, rotation):
    path = video_factory(codec=codec, width=160, height=120, seconds=2, rotation=rotation)
    plane = plane_for(device)
    prepared = plane.prepare(path, uri=str(path))
    det = plane.detect_frames(prepared)
    size = SAMPLING.detect_size
    assert det.frames.shape == (SAMPLING.detect_frames, 3, size, size)
    assert det.frames.device.type == device
    box = det.letterbox
    assert (box.width, box.height) == (160, 120)
    assert box.scale_x == pytest.approx(size / 160) and box.scale_y == pytest.approx(48 / 120)
    got = det.frames.float().cpu() * 255
    assert torch.allclose(got[:, :, 48:, :], torch.tensor(float(LETTERBOX_FILL)), atol=0.5)
    frames = reference_frames(path)
    for k, i in enumerate(det.indices):
        t = torch.from_numpy(np.ascontiguousarray(frames[i])).permute(2, 0, 1)[None].float()
        want = F.interpolate(t, size=(48, 64), mode="bilinear", antialias=True)[0]
        assert (got[k, :, :48, :] - want).abs().mean() < MEAN_TOL


@pytest.mark.gpu
def test_gpu_outputs_stay_on_the_gpu(video_factory):
    path = video_factory(codec="h264", width=160, height=120, seconds=2)
    plane = plane_for("cuda")
    (decoded,) = plane.decode([plane.prepare(path, uri=str(path))])
    assert decoded.route == "nvdec"
    clip = decoded.clip_tensor(decoded.plan.clips[0])
    assert clip.is_cuda and clip.dtype == torch.float16
    cpu = plane_for("cpu")
    (on_cpu,) = cpu.decode([cpu.prepare(path, uri=str(path))])
    assert_close(decoded.frames, on_cpu.frames)


def test_frame_filters_give_one_pass_numbers_from_chunks_and_reused_buffers(video_factory):
    """Every frame filter fed chunk by chunk equals one pass over the whole video, bit for
    bit, also when the thread's float buffers served another, larger video just before."""
    from vqf.config import FilterConfig
    from vqf.filters import FILTERS
    from vqf.filters.frames import FrameFilter, FrameMeasures

    plane = plane_for("cpu")
    short, long = (
        plane.decode([plane.prepare(p, uri=str(p))])[0]
        for p in (
            video_factory(codec="h264", width=96, height=64, seconds=2, seed=5),
            video_factory(codec="h264", width=96, height=64, seconds=4, seed=6),
        )
    )
    plane.close()
    names = [n for n in FILTERS.names() if issubclass(FILTERS.get(n), FrameFilter)]
    assert {"motion", "exposure", "cuts", "camera"} <= set(names)

    def measure(video, chunk: int) -> dict:
        filters = [FILTERS.get(n)(spec=FilterConfig()) for n in names]
        m = FrameMeasures(filters, plan=video.plan, info=video.info, sampling=SAMPLING)
        for start in range(0, len(video.frames), chunk):
            m.add(video.frames[start : start + chunk])
        return m.finish()

    whole = measure(short, len(short.frames))
    measure(long, len(long.frames))  # fills the buffers with another video's frames
    assert measure(short, 7) == whole
