"""V-JEPA 2 backbones through `transformers`: size presets, local loading, the encoder forward.

V-JEPA 2 has no learned position table: attention uses 3-D rotary embeddings whose spatial
grid is `config.crop_size // patch_size` and whose frame index is `token // tokens_per_frame`.
So any frame count works as is, and any square clip size that is a multiple of the patch size
works once `crop_size` is set to it before the model is built (`load_backbone` does that).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError

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


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """`auto` is FP16 on CUDA and float32 on CPU; explicit names are taken as given."""
    import torch

    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    allowed = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if name not in allowed:
        raise ConfigError(
            f"dtype {name!r} is not allowed", hint=f"allowed: auto, {', '.join(allowed)}"
        )
    return allowed[name]


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


def pretrained_backbone_model(
    path: str | Path, *, crop_size: int | None, device: str, dtype: torch.dtype
):
    """Loads a local Hugging Face folder (config.json + model.safetensors); never downloads."""
    from transformers import VJEPA2Model

    folder = Path(path)
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise ConfigError(
            f"backbone folder {str(folder)!r} lacks {', '.join(missing)}",
            hint="point models.<name>.path at a Hugging Face folder, or run `vqf models init-random DIR`",
        )
    quiet_transformers()
    extra = {"crop_size": crop_size} if crop_size else {}
    model = VJEPA2Model.from_pretrained(
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
            pixels = clips.to(device=self.device, dtype=self.dtype, non_blocking=True)
            # The encoder alone: VJEPA2Model.forward(skip_predictor=True) still gathers a
            # masked copy of every token through an int64 index as large as the output.
            tokens = self.model.encoder(pixel_values_videos=pixels).last_hidden_state
        self.calls += 1
        self.clips_encoded += int(clips.shape[0])
        return tokens


def check_clip_size(*, height: int, width: int, patch_size: int = 16) -> int:
    """The square clip size the backbones are built for; raises ConfigError otherwise."""
    if height != width or height % patch_size:
        raise ConfigError(
            f"sampling.height={height} and sampling.width={width} do not suit V-JEPA 2",
            hint=f"use a square clip whose side is a multiple of the patch size {patch_size}",
        )
    return height
