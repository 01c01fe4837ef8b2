"""`vqf models import`: checkpoints people already have, written in vqf's layout (checkpoints.py).

Sources, told apart by what they are:

- A Hugging Face V-JEPA 2 folder (`VJEPA2Model.save_pretrained`: config.json with model_type
  vjepa2, and model.safetensors, its shards with model.safetensors.index.json, or
  pytorch_model.bin). The encoder's tensors (`encoder.*`) are copied as they are; the
  predictor's (`predictor.*`) are skipped: never read into memory, never run.
- A `VJEPA2ForVideoClassification` folder: its encoder (`vjepa2.encoder.*`) as above, and its
  attentive pooler and classifier (`pooler.*`, `classifier.*`) as an attentive head whose
  labels come from the config's `id2label`.
- A head file: a PyTorch state dict (.pt, .pth, .bin, read with
  `torch.load(weights_only=True)`, never unpickled beyond that) or a safetensors file.

The head files' key layouts and how each maps onto vqf's heads: head_layouts.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vqf.errors import ConfigError
from vqf.models.head_layouts import (
    HEAD_SUFFIXES,
    head_from_state,
    key_listing,
    load_torch_file,
    read_state_dict,
    state_dict_in,
)

if TYPE_CHECKING:
    import torch

    from vqf.models.heads import Head

_CLASSIFIER = "VJEPA2ForVideoClassification"


@dataclass
class Imported:
    """What an import wrote: the recipe fragment, the files, and what was skipped."""

    source: str
    kind: str  # "backbone", "classifier" or "head"
    fragment: dict[str, Any] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # key prefix -> tensors skipped
    layout: str = ""
    labels: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"imported {self.kind} from {self.source}"]
        if self.layout:
            lines.append(f"  head layout: {self.layout}; labels: {', '.join(self.labels)}")
        for prefix, n in self.skipped.items():
            lines.append(f"  skipped {n} tensors under {prefix} (never run by vqf)")
        lines += [f"  wrote {p}" for p in self.written]
        return "\n".join(lines)


def import_checkpoint(
    source: str | Path,
    out: str | Path,
    *,
    name: str = "",
    filter_name: str = "",
    labels: Iterable[str] | None = None,
    rename: Iterable[str] = (),
    num_heads: int = 0,
    norm_eps: float | None = None,
    index: int | None = None,
) -> Imported:
    """Writes `source` (a folder or a head file) into the checkpoint folder `out`.

    `name` is the backbone's model name (default `backbone`) or the head file's stem (default
    the filter's name, else `head`); `filter_name` takes the labels from that registered filter
    (or checks the source's against them) and puts the result under `filters.<filter_name>` in
    `out/recipe.yaml`, which is merged with what an earlier import wrote there.
    """
    source = Path(source).expanduser()
    out = Path(out).expanduser().resolve()
    wanted = tuple(labels) if labels is not None else None
    if filter_name:
        from vqf.filters import FILTERS

        filter_labels = FILTERS.get(filter_name).labels
    else:
        filter_labels = None
    if source.is_dir():
        result = _import_folder(
            source,
            out,
            name=name or "backbone",
            filter_name=filter_name,
            labels=wanted,
            filter_labels=filter_labels,
        )
    elif source.is_file():
        if source.suffix not in HEAD_SUFFIXES:
            raise ConfigError(
                f"{str(source)!r} is neither a folder nor a head file",
                hint=f"a head file ends in {', '.join(HEAD_SUFFIXES)}",
            )
        state = read_state_dict(source, index=index)
        chosen = wanted or filter_labels
        if not chosen:
            raise ConfigError(
                f"head file {str(source)!r} carries no labels",
                hint="pass --filter NAME (its labels) or --labels a,b,... in the classifier's order",
            )
        head, layout = head_from_state(
            state,
            labels=chosen,
            rename=rename,
            num_heads=num_heads,
            norm_eps=norm_eps,
            where=str(source),
        )
        _check_filter_labels(head.labels, filter_name, filter_labels)
        result = Imported(source=str(source), kind="head", layout=layout, labels=head.labels)
        path = _write_head(head, out, name or filter_name or "head")
        result.written.append(path)
        if filter_name:
            result.fragment = {"filters": {filter_name: {"head": str(path)}}}
    else:
        raise ConfigError(f"{str(source)!r} does not exist", hint="give a folder or a head file")
    if result.fragment:
        result.written.append(_merge_recipe(out / "recipe.yaml", result.fragment))
    return result


# -- folders -------------------------------------------------------------------------------------
def _import_folder(source, out, *, name, filter_name, labels, filter_labels) -> Imported:
    config = _read_config(source)
    classifier = _CLASSIFIER in (config.get("architectures") or [])
    tensors = _folder_tensors(source)
    prefix = "vjepa2." if classifier else ""
    if not classifier and any(k.startswith("vjepa2.encoder.") for k in tensors):
        classifier, prefix = True, "vjepa2."  # a classification folder without architectures
    result = Imported(source=str(source), kind="classifier" if classifier else "backbone")
    encoder_keys = [k for k in tensors if k.startswith(f"{prefix}encoder.")]
    head_keys = [k for k in tensors if k.startswith(("pooler.", "classifier."))]
    skipped = [k for k in tensors if k.startswith(f"{prefix}predictor.")]
    other = sorted(set(tensors) - set(encoder_keys) - set(skipped) - set(head_keys))
    if other or not encoder_keys or (head_keys and not classifier):
        raise ConfigError(
            f"folder {str(source)!r} is not a V-JEPA 2 checkpoint vqf can read: "
            + (f"unexpected keys {key_listing(other)}" if other else "no encoder weights"),
            hint=f"expected {prefix}encoder.* and {prefix}predictor.* "
            + ("plus pooler.* and classifier.*" if classifier else "")
            + " (VJEPA2Model or VJEPA2ForVideoClassification.save_pretrained)",
        )
    if skipped:
        result.skipped[f"{prefix}predictor."] = len(skipped)
    encoder = {k[len(prefix) :]: tensors[k] for k in encoder_keys}
    _check_encoder(encoder, config, source)
    result.written += _write_backbone(encoder, config, out / name, source=source)
    result.fragment = {"models": {name: {"kind": "vjepa2", "path": str(out / name)}}}
    if not classifier:
        return result
    head_state = {k: tensors[k].load() for k in head_keys}
    num_labels = head_state["classifier.weight"].shape[0]
    if labels is None:
        labels = _config_labels(config, source, num_labels)
    if len(labels) != num_labels:
        raise ConfigError(
            f"{len(labels)} labels for a classifier of {num_labels} classes: {list(labels)}",
            hint="give --labels in the classifier's order, one per class",
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(
            f"the pooler of {str(source)!r} uses activation {config.get('hidden_act')!r}",
            hint="vqf's attentive head uses GELU (the V-JEPA 2 default); this one cannot be mapped",
        )
    head, layout = head_from_state(
        head_state,
        labels=tuple(labels),
        num_heads=int(config.get("num_attention_heads", 0)),
        norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        where=str(source),
    )
    _check_filter_labels(head.labels, filter_name, filter_labels)
    result.layout, result.labels = layout, head.labels
    path = _write_head(head, out, filter_name or f"{name}_classifier")
    result.written.append(path)
    if filter_name:
        result.fragment["filters"] = {filter_name: {"model": name, "head": str(path)}}
    return result


def _read_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"folder {str(source)!r} has no config.json",
            hint="a Hugging Face folder (save_pretrained) holds config.json and the weights",
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r} is not JSON: {e}") from None
    if config.get("model_type") != "vjepa2":
        raise ConfigError(
            f"{str(path)!r} has model_type {config.get('model_type')!r}",
            hint="vqf imports V-JEPA 2 folders (model_type vjepa2)",
        )
    return config


class _Lazy:
    """One tensor of a folder, read when asked (so skipped ones are never read)."""

    def __init__(self, read, shape):
        self._read, self.shape = read, tuple(shape)

    def load(self) -> torch.Tensor:
        return self._read()


def _folder_tensors(source: Path) -> dict[str, _Lazy]:
    """Every tensor of a folder's weights by key, without reading them yet."""
    index = source / "model.safetensors.index.json"
    if (source / "model.safetensors").is_file():
        files = {None: source / "model.safetensors"}
    elif index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {n: source / n for n in sorted(set(weight_map.values()))}
    elif (source / "pytorch_model.bin").is_file():
        state = load_torch_file(source / "pytorch_model.bin")
        return {k: _Lazy(lambda v=v: v, v.shape) for k, v in state_dict_in(state, where="").items()}
    else:
        raise ConfigError(
            f"folder {str(source)!r} has no weights",
            hint="expected model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        )
    from safetensors import safe_open

    out: dict[str, _Lazy] = {}
    for path in files.values():
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                out[key] = _Lazy(lambda p=path, k=key: _read_one(p, k), shape)
    return out


def _read_one(path: Path, key: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(key)


def _check_encoder(encoder: dict[str, _Lazy], config: dict[str, Any], source: Path) -> None:
    """The encoder keys and shapes the config's model expects, built on the meta device."""
    import torch
    from transformers import VJEPA2Config

    from vqf.models.backbone import encoder_model_class

    fields = {k: v for k, v in config.items() if k not in ("architectures", "id2label", "label2id")}
    with torch.device("meta"):
        model = encoder_model_class()(VJEPA2Config(**fields))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in encoder.items()}
    missing = sorted(set(expected) - set(got))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    extra = sorted(set(got) - set(expected))
    if missing or wrong or extra:
        problems = []
        if missing:
            problems.append(f"missing {key_listing(missing)}")
        if wrong:
            problems.append(
                "shapes differ: "
                + ", ".join(f"{k} {got[k]} (config: {expected[k]})" for k in wrong[:5])
            )
        if extra:
            problems.append(f"unexpected {key_listing(extra)}")
        raise ConfigError(
            f"the encoder weights of {str(source)!r} do not fit its config.json: "
            + "; ".join(problems),
            hint="the folder's config.json must be the one the weights were saved with",
        )


def _write_backbone(encoder, config, folder: Path, *, source: Path) -> list[Path]:
    from safetensors.torch import save_file

    if folder.resolve() == source.resolve():
        raise ConfigError(f"the output folder {str(folder)!r} is the source itself")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = {k: v for k, v in config.items() if k not in ("id2label", "label2id")}
    config["architectures"] = ["VJEPA2Model"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.load().contiguous() for k, v in encoder.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return [folder / "config.json", folder / "model.safetensors"]


def _config_labels(config: dict[str, Any], source: Path, num_labels: int) -> tuple[str, ...]:
    """The config's id2label in id order; transformers' LABEL_<i> names when it has none."""
    id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(num_labels)}
    try:
        return tuple(id2label[str(i)] for i in range(len(id2label)))
    except KeyError:
        raise ConfigError(
            f"the id2label of {str(source)!r} is not numbered 0..{len(id2label) - 1}",
            hint="give --labels in the classifier's order",
        ) from None


# -- output ----------------------------------------------------------------------------------------
def _check_filter_labels(labels, filter_name, filter_labels) -> None:
    if filter_labels is not None and tuple(labels) != tuple(filter_labels):
        raise ConfigError(
            f"the head's labels {list(labels)} are not filter {filter_name!r}'s {list(filter_labels)}",
            hint="if the classes are the same in this order, pass --labels "
            + ",".join(filter_labels),
        )


def _write_head(head: Head, out: Path, stem: str) -> Path:
    from vqf.models.heads import save_head

    return save_head(head, out / "heads" / f"{stem}.safetensors")


def _merge_recipe(path: Path, fragment: dict[str, Any]) -> Path:
    """`out/recipe.yaml` with `fragment`'s models and filters added (same names replaced)."""
    current = yaml.safe_load(path.read_text()) if path.is_file() else None
    current = current if isinstance(current, dict) else {}
    for section in ("models", "filters"):
        merged = dict(current.get(section) or {})
        for key, value in (fragment.get(section) or {}).items():
            merged[key] = {**(merged.get(key) or {}), **value}
        if merged:
            current[section] = merged
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(current, sort_keys=False))
    return path
