"""V-JEPA 2 backbones through `transformers`: size presets, local loading, the encoder forward.

V-JEPA 2 has no learned position table: attention uses 3-D rotary embeddings whose spatial
grid is `config.crop_size // patch_size` and whose frame index is `token // tokens_per_frame`.
So any frame count works as is, and any square clip size that is a multiple of the patch size
works once `crop_size` is set to it before the model is built (`load_backbone` does that).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError, ErrorType, Stage, VideoError

if TYPE_CHECKING:
    import torch

# Encoder sizes. `large` and `giant` are the published V-JEPA 2 ViT-L/16 and ViT-g/16
# configurations (facebook/vjepa2-vitl-fpc64-256, facebook/vjepa2-vitg-fpc64-256).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2.0,
        crop_size=32,
        frames_per_clip=8,
        pred_hidden_size=32,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        pred_num_mask_tokens=2,
        num_pooler_layers=1,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        mlp_ratio=4.0,
        crop_size=256,
        frames_per_clip=64,
        pred_hidden_size=384,
        pred_num_hidden_layers=12,
        pred_num_attention_heads=12,
        pred_num_mask_tokens=10,
    ),
    "giant": dict(
        hidden_size=1408,
        num_hidden_layers=40,
        num_attention_heads=22,
        mlp_ratio=48 / 11,
        crop_size=256,
        frames_per_clip=64,
        pred_hidden_size=384,
        pred_num_hidden_layers=12,
        pred_num_attention_heads=12,
        pred_num_mask_tokens=10,
    ),
}


DTYPE_NAMES = ("auto", "bf16", "fp16", "fp32")


def resolve_dtype(name: str, device: str | torch.device, *, bf16: bool = True) -> torch.dtype:
    """A recipe's `dtype` on `device`: `auto` is bf16 on CUDA GPUs with native bf16 (Ampere
    and later; V-JEPA 2 was trained in bf16), fp16 on older CUDA GPUs, fp32 on the CPU.

    `bf16=False` keeps `auto` at fp16 on CUDA (the YOLO detector, which ultralytics runs in
    fp16). The old spellings float16, bfloat16 and float32 are accepted.
    """
    import torch

    from vqf.config import DTYPE_ALIASES

    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_NAMES:
        raise ConfigError(
            f"dtype {name!r} is not allowed", hint=f"allowed: {', '.join(DTYPE_NAMES)}"
        )
    device = torch.device(device)
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if bf16 and has_bf16(device) else torch.float16
    if name == "bf16" and cuda and not has_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"dtype bf16 on {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}), which has no native bf16",
            hint="use dtype: auto or fp16 on this GPU",
        )
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def has_bf16(device: str | torch.device) -> bool:
    """Whether a CUDA device computes bf16 natively (compute capability 8.0 and later)."""
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16 or fp32, as recipes and reports spell them."""
    return str(dtype).removeprefix("torch.").replace("bfloat", "bf").replace("float", "fp")


def preset_config(size: str, *, crop_size: int | None = None, frames: int | None = None):
    """A `VJEPA2Config` for a size preset, optionally at another clip size."""
    from transformers import VJEPA2Config

    if size not in PRESETS:
        raise ConfigError(f"model size {size!r} is unknown", hint=f"allowed: {', '.join(PRESETS)}")
    values = dict(PRESETS[size])
    if crop_size:
        values["crop_size"] = crop_size
    if frames:
        values["frames_per_clip"] = frames
    return VJEPA2Config(**values)


def quiet_transformers() -> None:
    """Turns off transformers' per-load progress bars, which clutter the run's own display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def seed_for(name: str, seed: int = 0) -> int:
    """A stable seed per model name, so every rank draws the same random weights."""
    return (zlib.crc32(name.encode()) + seed) % (2**31)


def random_backbone_model(
    size: str, *, crop_size: int | None, device: str, dtype: torch.dtype, seed: int
):
    """A randomly initialised `VJEPA2Model` (for demos and profiling), built on `device`."""
    import torch
    from transformers import VJEPA2Model

    quiet_transformers()
    config = preset_config(size, crop_size=crop_size)
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.device(device):
            model = VJEPA2Model._from_config(
                config, attn_implementation="sdpa", dtype=torch.float32
            )
    return model.to(dtype=dtype).eval()


@functools.cache
def encoder_model_class():
    """`VJEPA2Model` without its predictor: the encoder alone, loaded from the same folders.

    The predictor's weights in a folder are skipped (never read into memory, never run); a
    classification folder's `vjepa2.encoder.*` keys load too (transformers strips the prefix).
    """
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2Encoder, VJEPA2PreTrainedModel

    class VJEPA2EncoderModel(VJEPA2PreTrainedModel):
        _keys_to_ignore_on_load_unexpected = [r"^predictor\.", r"^pooler\.", r"^classifier\."]

        def __init__(self, config):
            super().__init__(config)
            self.encoder = VJEPA2Encoder(config)
            self.post_init()

    return VJEPA2EncoderModel


def pretrained_backbone_model(
    path: str | Path, *, crop_size: int | None, device: str, dtype: torch.dtype
):
    """Loads the encoder of a local Hugging Face folder (config.json + model.safetensors, or
    shards with model.safetensors.index.json); never downloads."""
    folder = Path(path)
    has = {
        "config.json": (folder / "config.json").is_file(),
        "model.safetensors": (folder / "model.safetensors").is_file()
        or (folder / "model.safetensors.index.json").is_file(),
    }
    missing = [name for name, ok in has.items() if not ok]
    if missing:
        raise ConfigError(
            f"backbone folder {str(folder)!r} lacks {', '.join(missing)}",
            hint="point models.<name>.path at a Hugging Face folder (`vqf models import` "
            "converts one), or run `vqf models init-random DIR`",
        )
    quiet_transformers()
    extra = {"crop_size": crop_size} if crop_size else {}
    model = encoder_model_class().from_pretrained(
        folder,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        attn_implementation="sdpa",
        dtype=dtype,
        **extra,
    )
    return model.to(device).eval()


@dataclass
class Backbone:
    """One V-JEPA 2 encoder on one device; `encode` turns clips into tokens."""

    name: str
    model: Any
    device: Any
    dtype: Any
    calls: int = 0
    clips_encoded: int = 0
    finite: bool | None = None  # None: not checked yet; True once a batch passed; False: failed

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def crop_size(self) -> int:
        return int(self.model.config.crop_size)

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) normalised clips -> (N, L, D) encoder tokens, without gradients."""
        import torch

        if clips.ndim != 5 or clips.shape[2] != 3:
            raise ConfigError(
                f"backbone {self.name!r} takes clips shaped (N, T, 3, H, W), got {tuple(clips.shape)}"
            )
        height, width = clips.shape[-2:]
        if height != self.crop_size or width != self.crop_size:
            raise ConfigError(
                f"backbone {self.name!r} was built for {self.crop_size}x{self.crop_size} clips, "
                f"got {height}x{width}",
                hint="sampling.height and sampling.width must equal the size the bank was loaded for",
            )
        with torch.inference_mode():
            # Moved first, then cast: DALI's fp16 clips are cast on the device, not the host.
            pixels = clips.to(self.device, non_blocking=True).to(self.dtype)
            # The encoder alone: VJEPA2Model.forward(skip_predictor=True) still gathers a
            # masked copy of every token through an int64 index as large as the output.
            tokens = self.model.encoder(pixel_values_videos=pixels).last_hidden_state
            if not self.finite:
                self._check_finite(pixels, tokens)
        self.calls += 1
        self.clips_encoded += int(clips.shape[0])
        return tokens

    def _check_finite(self, pixels: torch.Tensor, tokens: torch.Tensor) -> None:
        """Until one batch has passed: inf/NaN tokens from finite clips fail the batch.

        A reduced precision that overflows on these weights shows on the first batch; after
        one clean batch the check (a device sync) is no longer paid.
        """
        import torch

        if not bool(torch.isfinite(pixels).all()):
            return  # the clips are broken, not the model: nothing to learn about precision
        bad = int((~torch.isfinite(tokens)).sum())
        if bad == 0:
            self.finite = True
            return
        self.finite = False
        raise VideoError(
            ErrorType.MODEL_FAILED,
            f"backbone {self.name!r} in {dtype_name(self.dtype)} gave {bad} inf/NaN values "
            f"of {tokens.numel()} from finite clips",
            stage=Stage.MODEL,
            hint=f"set models.{self.name}.dtype: fp32 (or bf16 on a GPU that has it)",
        )


def check_clip_size(*, height: int, width: int, patch_size: int = 16) -> int:
    """The square clip size the backbones are built for; raises ConfigError otherwise."""
    if height != width or height % patch_size:
        raise ConfigError(
            f"sampling.height={height} and sampling.width={width} do not suit V-JEPA 2",
            hint=f"use a square clip whose side is a multiple of the patch size {patch_size}",
        )
    return height
