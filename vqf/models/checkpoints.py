"""Checkpoint layout, and `init_random`, which writes a complete random set in that layout.

Layout of a checkpoint folder (what `vqf models init-random DIR` writes; trained checkpoints
use the same files):

    DIR/
      backbone/            V-JEPA 2 encoder, a Hugging Face folder (VJEPA2Model.save_pretrained):
        config.json          VJEPA2Config (hidden_size, num_hidden_layers, crop_size, ...)
        model.safetensors    keys encoder.*; predictor.* (init-random writes it) is skipped
                             at load: the predictor is never built nor run
      rov_backbone/        the rotation filter's own backbone, same files
      detector/
        detector.safetensors YOLOv8 DetectionModel state dict (keys model.0.conv.weight, ...,
                             unfused, float32); header metadata: format="vqf-yolo/1",
                             cfg="yolov8n.yaml" (built from ultralytics' bundled yaml), nc,
                             names (JSON list of class names)
      heads/<filter>.safetensors
                           one head per filter; header metadata: format="vqf-head/1",
                           kind ("linear" | "attentive"), labels (JSON list), dim, num_blocks,
                           num_heads, mlp_ratio, norm_eps. Linear keys: linear.weight, linear.bias.
                           Attentive keys: query, blocks.<i>.*, cross.{norm1,attn.q,attn.kv,
                           attn.proj,norm2,mlp.0,mlp.2}.*, linear.*
      recipe.yaml          `models:` and `filters:` sections pointing at these files
      README.md            this listing, for whoever finds the folder

Every file is safetensors or JSON/YAML: loading never unpickles anything. `vqf models import`
(importer.py) writes this layout from Hugging Face folders and other head layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vqf.errors import ConfigError
from vqf.models.backbone import PRESETS, random_backbone_model, seed_for
from vqf.models.detector import DEFAULT_CFG, DETECTOR_FILE, random_network, save_detector
from vqf.models.heads import make_head, save_head

RANDOM_SIZES = ("tiny", "large", "giant")


def init_random(
    directory: str | Path,
    *,
    size: str = "tiny",
    filters: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes random backbones, detector and heads for `filters` (default: all registered
    filters that use a model).

    Returns the recipe fragment (`models:` and `filters:`) that loads them, also written to
    DIR/recipe.yaml. Weights are seeded by model name and `seed`, so reruns give equal files.
    """
    import torch

    from vqf.filters import FILTERS, DetectionFilter

    if size not in RANDOM_SIZES:
        raise ConfigError(f"size {size!r} is unknown", hint=f"allowed: {', '.join(RANDOM_SIZES)}")
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    chosen = {name: FILTERS.get(name) for name in (filters or FILTERS.names())}
    chosen = {name: fcls for name, fcls in chosen.items() if fcls.default_model}
    models: dict[str, dict[str, Any]] = {}
    dims: dict[str, int] = {}
    for fcls in chosen.values():
        model_name = fcls.default_model
        if model_name in models:
            continue
        if issubclass(fcls, DetectionFilter):
            network = random_network(names=fcls.labels, seed=seed_for(model_name, seed))
            save_detector(network, root / model_name / DETECTOR_FILE, names=fcls.labels)
            models[model_name] = {"kind": "yolo", "path": str(root / model_name)}
            continue
        net = random_backbone_model(
            size, crop_size=None, device="cpu", dtype=torch.float32, seed=seed_for(model_name, seed)
        )
        net.save_pretrained(root / model_name, safe_serialization=True)
        dims[model_name] = int(net.config.hidden_size)
        models[model_name] = {"kind": "vjepa2", "path": str(root / model_name), "size": size}
    filter_specs: dict[str, dict[str, Any]] = {}
    for name, fcls in chosen.items():
        filter_specs[name] = {"enable": True}
        if not fcls.head_kind:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(f"head:{name}", seed))
            head = make_head(
                fcls.head_kind,
                dim=dims[fcls.default_model],
                labels=fcls.labels,
                num_blocks=fcls.head_blocks,
            )
        filter_specs[name]["head"] = str(save_head(head, root / "heads" / f"{name}.safetensors"))
    fragment = {"models": models, "filters": filter_specs}
    (root / "recipe.yaml").write_text(yaml.safe_dump(fragment, sort_keys=False))
    (root / "README.md").write_text(_readme(size=size, seed=seed, fragment=fragment))
    return fragment


def _readme(*, size: str, seed: int, fragment: dict[str, Any]) -> str:
    lines = [
        "# Random vqf checkpoints",
        "",
        f"Randomly initialised (size `{size}`, seed {seed}): for demos and throughput profiling",
        "only; their scores mean nothing. Layout (see vqf/models/checkpoints.py):",
        "",
    ]
    for name, model in fragment["models"].items():
        files = "config.json, model.safetensors" if model["kind"] == "vjepa2" else DETECTOR_FILE
        lines.append(f"- `{name}/` ({model['kind']}): {files}")
    for name, spec in fragment["filters"].items():
        if "head" in spec:
            lines.append(f"- `heads/{name}.safetensors`: head of filter `{name}`")
    lines += ["", "Paste `recipe.yaml` into a recipe's `models:` and `filters:` sections.", ""]
    preset = PRESETS[size]
    lines.append(
        f"Backbone preset `{size}`: hidden {preset['hidden_size']}, "
        f"{preset['num_hidden_layers']} layers, {preset['num_attention_heads']} heads; "
        f"detector built from `{DEFAULT_CFG}`."
    )
    return "\n".join(lines) + "\n"
