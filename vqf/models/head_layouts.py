"""Head files from other trainers: their key layouts, read into vqf's heads (heads.py).

A head file is a PyTorch state dict (.pt, .pth, .bin, read with `torch.load(weights_only=True)`,
never unpickled beyond that) or a safetensors file. Its keys, once `module.` / `_orig_mod.`
prefixes are stripped, `--rename OLD=NEW` prefix rewrites applied, and a training checkpoint's
`state_dict` / `model` / `classifier` / `head` / `classifiers[i]` entry unwrapped, must be in
one of these layouts (D = token width, C = number of labels):

    linear   weight (C, D) and bias (C), bare or under linear. / head. / fc. / classifier.:
             the tokens are mean-pooled, then the linear layer (vqf's LinearHead).
    vqf      vqf's own attentive head: query, blocks.<i>.*, cross.*, linear.* (heads.py).
    vjepa    V-JEPA's AttentiveClassifier (facebookresearch/jepa and vjepa2 evals):
               pooler.query_tokens                          -> query
               pooler.blocks.<i>.attn.qkv (3D, D)           -> blocks.<i>.attn.q (rows :D),
                                                               blocks.<i>.attn.kv (rows D:)
               pooler.blocks.<i>.attn.proj                  -> blocks.<i>.attn.proj
               pooler.blocks.<i>.{norm1,norm2}              -> blocks.<i>.{norm1,norm2}
               pooler.blocks.<i>.mlp.{fc1,fc2}              -> blocks.<i>.mlp.{0,2}
               pooler.cross_attention_block.xattn.{q,kv,proj} -> cross.attn.{q,kv,proj}
               pooler.cross_attention_block.{norm1,norm2}   -> cross.{norm1,norm2}
               pooler.cross_attention_block.mlp.{fc1,fc2}   -> cross.mlp.{0,2}
               linear                                       -> linear
             Its LayerNorms default to epsilon 1e-5 (torch's); --norm-eps overrides.
    hf       transformers' VJEPA2AttentivePooler and classifier (what a classification folder
             holds, or a state dict of `pooler` and `classifier`):
               pooler.query_tokens                          -> query
               pooler.self_attention_layers.<i>.layer_norm{1,2}  -> blocks.<i>.norm{1,2}
               pooler.self_attention_layers.<i>.self_attn.q_proj -> blocks.<i>.attn.q
               pooler.self_attention_layers.<i>.self_attn.{k,v}_proj -> blocks.<i>.attn.kv
               pooler.self_attention_layers.<i>.self_attn.out_proj -> blocks.<i>.attn.proj
               pooler.self_attention_layers.<i>.mlp.fc{1,2} -> blocks.<i>.mlp.{0,2}
               pooler.cross_attention_layer.*               -> cross.* (the same names);
                 its cross-attention has no output projection: cross.attn.proj = identity
               classifier                                   -> linear

Anything else is refused with the keys found and these layouts. The number of attention heads
is not in the weights: it comes from the config (classification folders), --num-heads, or the
default of vqf's heads (16 for D = 1024).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from vqf.models.heads import Head

HEAD_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
LAYOUTS = ("linear", "vqf", "vjepa", "hf")
_STRIP = ("module.", "_orig_mod.")
_WRAPPERS = ("state_dict", "model", "classifier", "head")


def read_state_dict(path: Path, *, index: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a head file: safetensors, or a PyTorch file read with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises several types for a damaged file
            raise ConfigError(f"{str(path)!r} is not a safetensors file: {e}") from None
    return state_dict_in(load_torch_file(path), where=str(path), index=index)


def load_torch_file(path: Path) -> Any:
    """What torch.load(weights_only=True) gives: tensors and plain containers, nothing else."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{str(path)!r} is not a plain PyTorch state dict: torch.load(weights_only=True) "
            f"refused it ({first[:300]})",
            hint="vqf never unpickles beyond weights_only; save `model.state_dict()` with "
            "torch.save, or as safetensors",
        ) from None


def state_dict_in(obj: Any, *, where: str, index: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside what torch.load returned: the dict itself, or a wrapper's entry."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, dict):
        classifiers = obj.get("classifiers")
        if isinstance(classifiers, (list, tuple)) and classifiers:
            if index is None and len(classifiers) > 1:
                raise ConfigError(
                    f"{where!r} holds {len(classifiers)} classifiers",
                    hint=f"pick one with --index 0..{len(classifiers) - 1}",
                )
            chosen = index or 0
            if not 0 <= chosen < len(classifiers):
                raise ConfigError(
                    f"--index {chosen} is out of range",
                    hint=f"{where!r} holds classifiers 0..{len(classifiers) - 1}",
                )
            return state_dict_in(classifiers[chosen], where=where)
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                return state_dict_in(obj[key], where=where, index=index)
    found = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(
        f"{where!r} holds no state dict (found {found})",
        hint="a dict of tensors, or one under state_dict / model / classifier / head / "
        "classifiers[i]",
    )


def head_from_state(
    state: dict[str, torch.Tensor],
    *,
    labels: tuple[str, ...],
    rename: Iterable[str] = (),
    num_heads: int = 0,
    norm_eps: float | None = None,
    where: str = "head",
) -> tuple[Head, str]:
    """A vqf head holding exactly `state`'s weights, and the layout they were in."""
    state = _renamed(_stripped(state), rename)
    found = [(name, m) for name, convert in _CONVERTERS.items() if (m := convert(state))]
    if not found:
        raise ConfigError(
            f"the keys of {where!r} are in no layout vqf knows: {key_listing(sorted(state), state)}",
            hint="known layouts: "
            + ", ".join(LAYOUTS)
            + " (their keys: `vqf models import --help`, or vqf/models/head_layouts.py); map other "
            "names onto one with --rename OLD=NEW (key prefixes, repeatable), e.g. "
            "--rename probe.=linear.",
        )
    layout, mapped = found[0]
    weights, eps_default = mapped
    head = _build_head(
        weights,
        layout=layout,
        labels=labels,
        num_heads=num_heads,
        norm_eps=eps_default if norm_eps is None else norm_eps,
        where=where,
    )
    return head, layout


def _stripped(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        while key.startswith(_STRIP):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _renamed(state: dict[str, Any], rename: Iterable[str]) -> dict[str, Any]:
    for rule in rename:
        old, sep, new = rule.partition("=")
        if not sep or not old:
            raise ConfigError(
                f"--rename {rule!r} is not OLD=NEW", hint="e.g. --rename probe.=linear."
            )
        state = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def _from_linear(state):
    for prefix in ("", "linear.", "head.", "fc.", "classifier."):
        if set(state) == {f"{prefix}weight", f"{prefix}bias"}:
            weight, bias = state[f"{prefix}weight"], state[f"{prefix}bias"]
            if weight.ndim == 2 and bias.shape == weight.shape[:1]:
                return {"linear.weight": weight, "linear.bias": bias}, None
    return None


def _from_vqf(state):
    if "query" in state and any(k.startswith("cross.") for k in state):
        return dict(state), 1e-6
    return None


_VJEPA_BLOCK = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}


def _from_vjepa(state):
    if "pooler.query_tokens" not in state or not any(
        k.startswith("pooler.cross_attention_block.") for k in state
    ):
        return None
    out: dict[str, Any] = {"query": state["pooler.query_tokens"]}
    for key, value in state.items():
        if key.startswith("linear."):
            out[key] = value
            continue
        if key == "pooler.query_tokens":
            continue
        m = re.fullmatch(r"pooler\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        c = re.fullmatch(r"pooler\.cross_attention_block\.(.+)\.(weight|bias)", key)
        if m:
            block, part, kind = m.groups()
            base = f"blocks.{block}"
            if part == "attn.qkv":
                dim = value.shape[0] // 3
                out[f"{base}.attn.q.{kind}"] = value[:dim]
                out[f"{base}.attn.kv.{kind}"] = value[dim:]
            elif part == "attn.proj":
                out[f"{base}.attn.proj.{kind}"] = value
            elif part in _VJEPA_BLOCK:
                out[f"{base}.{_VJEPA_BLOCK[part]}.{kind}"] = value
            else:
                return None
        elif c:
            part, kind = c.groups()
            if part.startswith("xattn.") and part[6:] in ("q", "kv", "proj"):
                out[f"cross.attn.{part[6:]}.{kind}"] = value
            elif part in _VJEPA_BLOCK:
                out[f"cross.{_VJEPA_BLOCK[part]}.{kind}"] = value
            else:
                return None
        else:
            return None
    return out, 1e-5  # torch's LayerNorm default, which V-JEPA's pooler uses


_HF_PARTS = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
    "self_attn.q_proj": "attn.q",
    "self_attn.out_proj": "attn.proj",
    "cross_attn.q_proj": "attn.q",
}


def _from_hf(state):
    import torch

    if "pooler.query_tokens" not in state or not any(
        k.startswith("pooler.cross_attention_layer.") for k in state
    ):
        return None
    out: dict[str, Any] = {"query": state["pooler.query_tokens"]}
    pairs: dict[str, dict[str, Any]] = {}  # k_proj / v_proj, stacked into kv
    for key, value in state.items():
        if key == "pooler.query_tokens":
            continue
        if key.startswith("classifier."):
            out["linear." + key.removeprefix("classifier.")] = value
            continue
        m = re.fullmatch(r"pooler\.self_attention_layers\.(\d+)\.(.+)\.(weight|bias)", key)
        c = re.fullmatch(r"pooler\.cross_attention_layer\.(.+)\.(weight|bias)", key)
        if m:
            base, part, kind = f"blocks.{m.group(1)}", m.group(2), m.group(3)
        elif c:
            base, part, kind = "cross", c.group(1), c.group(2)
        else:
            return None
        if part in (
            "self_attn.k_proj",
            "self_attn.v_proj",
            "cross_attn.k_proj",
            "cross_attn.v_proj",
        ):
            pairs.setdefault(f"{base}.attn.kv.{kind}", {})[part[-6]] = value
        elif part in _HF_PARTS:
            out[f"{base}.{_HF_PARTS[part]}.{kind}"] = value
        else:
            return None
    for key, kv in pairs.items():
        if set(kv) != {"k", "v"}:
            return None
        out[key] = torch.cat([kv["k"], kv["v"]])
    dim = out["query"].shape[-1]
    # transformers' pooler cross-attends without an output projection: the identity does that.
    out["cross.attn.proj.weight"] = torch.eye(dim, dtype=out["query"].dtype)
    out["cross.attn.proj.bias"] = torch.zeros(dim, dtype=out["query"].dtype)
    return out, 1e-6


_CONVERTERS = {"linear": _from_linear, "vqf": _from_vqf, "vjepa": _from_vjepa, "hf": _from_hf}


def _build_head(weights, *, layout, labels, num_heads, norm_eps, where) -> Head:
    import torch

    from vqf.models.heads import AttentiveHead, LinearHead, _default_heads

    classes, dim = weights["linear.weight"].shape
    if len(labels) != classes:
        raise ConfigError(
            f"{len(labels)} labels {list(labels)} for the {classes} classes of {where!r}",
            hint="give one label per class, in the classifier's order",
        )
    if layout == "linear":
        head: Head = LinearHead(dim=dim, labels=labels)
    else:
        blocks = sorted({int(k.split(".")[1]) for k in weights if k.startswith("blocks.")})
        hidden = weights["cross.mlp.0.weight"].shape[0]
        heads = num_heads or _default_heads(dim)
        if dim % heads:
            raise ConfigError(
                f"--num-heads {heads} does not divide the token width {dim} of {where!r}",
                hint="give the number of attention heads the head was trained with",
            )
        head = AttentiveHead(
            dim=dim,
            labels=labels,
            num_blocks=len(blocks),
            num_heads=heads,
            mlp_ratio=_ratio(hidden, dim),
            norm_eps=norm_eps,
        )
    expected = head.state_dict()
    state = {k: v.to(torch.float32) for k, v in weights.items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        raise ConfigError(
            f"the {layout} head in {where!r} is incomplete or inconsistent: "
            + "; ".join(
                p
                for p in (
                    f"missing {key_listing(missing)}" if missing else "",
                    f"unexpected {key_listing(extra)}" if extra else "",
                    f"shapes differ at {key_listing(wrong, state)}" if wrong else "",
                )
                if p
            ),
            hint="check the layout's keys in vqf/models/head_layouts.py; --rename maps prefixes",
        )
    head.load_state_dict(state, strict=True)
    return head.eval()


def _ratio(hidden: int, dim: int) -> float:
    """An mlp_ratio with int(dim * ratio) == hidden, as the head builds its MLP."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def key_listing(keys: list[str], state: dict[str, Any] | None = None, *, limit: int = 12) -> str:
    """Keys (with shapes when `state` is given), the first `limit` of them and a count."""
    shown = [f"{k} {tuple(state[k].shape)}" if state is not None else k for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more + f" ({len(keys)} keys)"
