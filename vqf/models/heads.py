"""Classifier heads on backbone tokens: linear (pooled) and V-JEPA's attentive probe.

A head file is one safetensors file: the state dict, plus header metadata (all strings)
`format` = "vqf-head/1", `kind` ("linear" | "attentive"), `labels` (a JSON list), `dim`,
`num_blocks`, `num_heads`, `mlp_ratio`, `norm_eps` (the LayerNorms' epsilon; 1e-6 when absent).
Nothing is ever unpickled. `vqf models import` writes these files from other layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqf.errors import ConfigError
from vqf.models.files import read_tagged

HEAD_FORMAT = "vqf-head/1"
HEAD_KINDS = ("linear", "attentive")


class LinearHead(nn.Module):
    """Mean-pooled tokens -> linear -> softmax."""

    kind = "linear"

    def __init__(self, *, dim: int, labels: tuple[str, ...]):
        super().__init__()
        self.dim = dim
        self.labels = tuple(labels)
        self.num_blocks = 0
        self.num_heads = 0
        self.mlp_ratio = 0.0
        self.norm_eps = 0.0
        self.linear = nn.Linear(dim, len(self.labels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, D) tokens -> (N, len(labels)) float32 probabilities."""
        logits = self.linear(tokens.mean(dim=1))
        return logits.float().softmax(dim=-1)


class _Attention(nn.Module):
    """Multi-head attention of queries `x` over `context` with SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, lq, d = x.shape
        heads = self.num_heads
        q = self.q(x).view(n, lq, heads, d // heads).transpose(1, 2)
        k, v = self.kv(context).view(n, -1, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, lq, d))


class _Block(nn.Module):
    """Pre-norm transformer block; cross-attends to `context` when one is given."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float = 1e-6):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            normed = self.norm1(x)
            x = x + self.attn(normed, normed)
        else:
            # V-JEPA's cross-attention block: the query is not normalised, the tokens are.
            x = x + self.attn(x, self.norm1(context))
        return x + self.mlp(self.norm2(x))


class AttentiveHead(nn.Module):
    """V-JEPA's attentive probe: self-attention blocks, a learned query cross-attending, linear."""

    kind = "attentive"

    def __init__(
        self,
        *,
        dim: int,
        labels: tuple[str, ...],
        num_blocks: int = 0,
        num_heads: int = 0,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        num_heads = num_heads or _default_heads(dim)
        if dim % num_heads:
            raise ConfigError(f"head dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim = dim
        self.labels = tuple(labels)
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.norm_eps = float(norm_eps)
        self.blocks = nn.ModuleList(
            _Block(dim, num_heads, mlp_ratio, norm_eps) for _ in range(num_blocks)
        )
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.cross = _Block(dim, num_heads, mlp_ratio, norm_eps)
        self.linear = nn.Linear(dim, len(self.labels))
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, D) tokens -> (N, len(labels)) float32 probabilities."""
        for block in self.blocks:
            tokens = block(tokens)
        pooled = self.cross(self.query.expand(tokens.shape[0], -1, -1), tokens).squeeze(1)
        return self.linear(pooled).float().softmax(dim=-1)


Head = LinearHead | AttentiveHead


def _default_heads(dim: int) -> int:
    """The widest head count up to 16 that divides `dim` with heads of at least 32 channels."""
    for heads in (16, 12, 8, 4, 2):
        if dim % heads == 0 and dim // heads >= 32:
            return heads
    return 1


def make_head(kind: str, *, dim: int, labels: tuple[str, ...], num_blocks: int = 0) -> Head:
    """A freshly initialised head of `kind`."""
    if kind == "linear":
        return LinearHead(dim=dim, labels=labels)
    if kind == "attentive":
        return AttentiveHead(dim=dim, labels=labels, num_blocks=num_blocks)
    raise ConfigError(f"head kind {kind!r} is unknown", hint=f"allowed: {', '.join(HEAD_KINDS)}")


def save_head(head: Head, path: str | Path) -> Path:
    """Writes `head` as safetensors with its kind, labels and sizes in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()
    }
    metadata = {
        "format": HEAD_FORMAT,
        "kind": head.kind,
        "labels": json.dumps(list(head.labels)),
        "dim": str(head.dim),
        "num_blocks": str(head.num_blocks),
        "num_heads": str(head.num_heads),
        "mlp_ratio": repr(head.mlp_ratio),
        "norm_eps": repr(head.norm_eps),
    }
    save_file(state, str(path), metadata=metadata)
    return path


def load_head(path: str | Path) -> Head:
    """Reads a head file written by `save_head` (float32, on the CPU)."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"head file {str(path)!r} does not exist", hint="set filters.<name>.head")
    state, meta = read_tagged(
        path, what="head", fmt=HEAD_FORMAT, writer="vqf.models.heads.save_head"
    )
    try:
        labels = tuple(json.loads(meta["labels"]))
        dim = int(meta["dim"])
        kind = meta["kind"]
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {HEAD_KINDS}")
        if kind == "linear":
            head: Head = LinearHead(dim=dim, labels=labels)
        else:
            head = AttentiveHead(
                dim=dim,
                labels=labels,
                num_blocks=int(meta["num_blocks"]),
                num_heads=int(meta["num_heads"]),
                mlp_ratio=float(meta["mlp_ratio"]),
                norm_eps=float(meta.get("norm_eps", "1e-06")),
            )
        head.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(f"head file {str(path)!r} is inconsistent: {e}") from None
    return head.eval()
