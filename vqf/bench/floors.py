"""The floors of DESIGN.md section 8, computed for the videos at hand: NVDEC decode rate and
backbone FLOPs per clip, so a profile can say how far from the hardware's limit a run is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# -- the floors (DESIGN.md section 8) ----------------------------------------------------------
NVDEC_FPS_1080P_H264 = 771.0  # one NVDEC engine, 1080p H.264 (NVIDIA's NVDEC application note)
CODEC_SPEED = {"h264": 1.0, "hevc": 1.7}  # relative to H.264; other codecs are taken as H.264
NVDEC_ENGINES = {  # per GPU, from NVIDIA's video codec support matrix
    "B200": 7,
    "GH200": 7,
    "H200": 7,
    "H100": 7,
    "H800": 7,
    "H20": 7,
    "A100": 5,
    "A800": 5,
    "A30": 4,
    "L4": 4,
    "L40S": 3,
    "L40": 3,
    "A40": 2,
    "A10": 2,
    "T4": 2,
    "V100": 1,
}
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}  # dense bf16 as measured on an H100 (same die)
PIXELS_1080P = 1920 * 1080


def _by_gpu_name(table: dict[str, Any], gpu_name: str) -> Any:
    """The entry whose key is a whole word of the GPU's name ("NVIDIA H100 80GB HBM3")."""
    for key in sorted(table, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", gpu_name):
            return table[key]
    return None


def nvdec_engines(gpu_name: str) -> int | None:
    """NVDEC engines of a GPU by its name; None when the name is not in the table."""
    return _by_gpu_name(NVDEC_ENGINES, gpu_name)


def tokens_per_clip(
    *, frames: int, height: int, width: int, patch_size: int = 16, tubelet_size: int = 2
) -> int:
    """Encoder tokens of one clip: tubelets of `tubelet_size` frames, `patch_size` patches."""
    return -(-frames // tubelet_size) * (height // patch_size) * (width // patch_size)


def encoder_params(
    *,
    hidden: int,
    layers: int,
    mlp_ratio: float,
    patch_size: int = 16,
    tubelet_size: int = 2,
    in_chans: int = 3,
) -> float:
    """Weights a token passes through: per layer q, k, v, out (4 d^2) and the MLP (2 r d^2)."""
    per_layer = 4 * hidden**2 + 2 * mlp_ratio * hidden**2
    return layers * per_layer + in_chans * tubelet_size * patch_size**2 * hidden


def clip_flops(
    *,
    hidden: int,
    layers: int,
    mlp_ratio: float,
    tokens: int,
    patch_size: int = 16,
    tubelet_size: int = 2,
    in_chans: int = 3,
) -> float:
    """FLOPs of one encoder pass: 2 x params x tokens, plus QK^T and AV (4 n^2 d per layer)."""
    params = encoder_params(
        hidden=hidden,
        layers=layers,
        mlp_ratio=mlp_ratio,
        patch_size=patch_size,
        tubelet_size=tubelet_size,
        in_chans=in_chans,
    )
    return 2 * params * tokens + 4 * layers * tokens**2 * hidden


@dataclass(frozen=True)
class VideoLoad:
    """What one video costs: frames the decoder must produce and encoder FLOPs of its clips."""

    codec: str
    width: int
    height: int
    frames_decoded: int
    duration_s: float
    flops: float  # with the recipe's shared backbones
    flops_per_filter_backbone: float = 0.0  # one backbone per filter, as the seed does it


@dataclass(frozen=True)
class Floors:
    """The most videos/s a GPU can give for these videos, by decode and by model."""

    gpu: str
    nvdec_engines: int | None
    decode_fps: float | None  # frames/s of all engines for this mix of codecs and sizes
    decode_videos_per_s: float | None
    tflop_per_video: float
    peak_tflops: float | None
    model_videos_per_s: float | None

    @property
    def binding(self) -> tuple[str, float] | None:
        """("model" or "decode", videos/s) of the lower floor; None when neither is known."""
        known = [
            (n, v)
            for n, v in (("decode", self.decode_videos_per_s), ("model", self.model_videos_per_s))
            if v
        ]
        return min(known, key=lambda kv: kv[1]) if known else None


def compute_floors(
    videos: list[VideoLoad],
    *,
    gpu_name: str,
    engines: int | None = None,
    peak_tflops: float | None = None,
) -> Floors:
    """DESIGN.md section 8 for `videos`: NVDEC time of their frames, tensor-core time of their clips."""
    engines = engines or nvdec_engines(gpu_name)
    peak = peak_tflops or _by_gpu_name(PEAK_TFLOPS, gpu_name)
    n = max(len(videos), 1)
    decode_fps = decode_vps = None
    if engines and videos:
        # one engine's rate scales with the pixels per frame and the codec
        seconds = (
            sum(
                v.frames_decoded
                / (
                    NVDEC_FPS_1080P_H264
                    * CODEC_SPEED.get(v.codec, 1.0)
                    * PIXELS_1080P
                    / max(v.width * v.height, 1)
                )
                for v in videos
            )
            / engines
        )
        decode_fps = sum(v.frames_decoded for v in videos) / seconds if seconds else None
        decode_vps = len(videos) / seconds if seconds else None
    tflop = sum(v.flops for v in videos) / n / 1e12
    return Floors(
        gpu=gpu_name,
        nvdec_engines=engines,
        decode_fps=decode_fps,
        decode_videos_per_s=decode_vps,
        tflop_per_video=tflop,
        peak_tflops=peak,
        model_videos_per_s=peak / tflop if peak and tflop > 0 else None,
    )


def video_load(
    prepared: Any,
    *,
    backbones: dict[str, Any],
    reads: dict[str, set[str]],
    filter_reads: list[tuple[str, set[str]]] | None = None,
) -> VideoLoad:
    """A probed and planned video's load. `reads`: backbone name -> clip kinds it encodes;
    `filter_reads`: (backbone, kinds) of each filter, for one backbone per filter.

    Decoding goes GOP by GOP, so every frame from the first to the last sampled one is
    decoded when samples are closer together than a GOP (the usual case).
    """
    plan, info = prepared.plan, prepared.info

    def flops_of(backbone: Any, kinds: set[str]) -> float:
        cfg = backbone.model.config
        total = 0.0
        for clip in plan.clips:
            if clip.kind in kinds:
                tokens = tokens_per_clip(
                    frames=len(clip.take),
                    height=cfg.crop_size,
                    width=cfg.crop_size,
                    patch_size=cfg.patch_size,
                    tubelet_size=cfg.tubelet_size,
                )
                total += clip_flops(
                    hidden=cfg.hidden_size,
                    layers=cfg.num_hidden_layers,
                    mlp_ratio=cfg.mlp_ratio,
                    tokens=tokens,
                    patch_size=cfg.patch_size,
                    tubelet_size=cfg.tubelet_size,
                    in_chans=cfg.in_chans,
                )
        return total

    shared = sum(flops_of(backbones[name], kinds) for name, kinds in reads.items())
    per_filter = sum(flops_of(backbones[name], kinds) for name, kinds in (filter_reads or []))
    frames = plan.frames
    return VideoLoad(
        codec=info.codec,
        width=info.width,
        height=info.height,
        frames_decoded=int(frames[-1] - frames[0] + 1) if len(frames) else 0,
        duration_s=float(info.duration_s),
        flops=shared,
        flops_per_filter_backbone=per_filter or shared,
    )
