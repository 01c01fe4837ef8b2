"""`vqf dedup OUTPUTS --threshold 0.95`: near-duplicate videos by the cosine of their embeddings.

The search is exact: every pair is compared, in square blocks of `block` x `block` cosines
computed with torch on the run's device (a GPU when there is one), over the upper triangle
only. Memory is the vectors themselves (a million 1024-d float16 vectors: 2 GB) plus one
block of cosines (`block`^2 float32: 64 MB at 4096) plus the pairs found, so it stays bounded
for a million embeddings. Pairs at or above the threshold join groups (connected components);
each group keeps one video: a kept verdict before a dropped one, then the longer video, then
the first id.

Writes `pairs.jsonl` ({a, b, cosine}), `groups.jsonl` ({keep, drop: [...]}) and `keep.txt`
(every video id not dropped, one a line) into `--out` (default OUTPUTS/dedup).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from vqf.errors import ConfigError

log = logging.getLogger(__name__)


def similar_pairs(
    vectors: np.ndarray, *, threshold: float, block: int = 4096, device: str = "cpu"
) -> list[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every pair of rows whose cosine is >= `threshold`.

    Rows must be L2-normalised. Block (a, b) with b >= a holds rows [a, a+block) against
    [b, b+block); only one block of cosines exists at a time.
    """
    import torch

    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold} is not a cosine", hint="allowed: -1..1")
    if block < 1:
        raise ConfigError(f"block {block} must be at least 1")
    n = len(vectors)
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    x = torch.as_tensor(np.asarray(vectors), device=device).to(dtype)
    pairs: list[tuple[int, int, float]] = []
    with torch.inference_mode():
        for a in range(0, n, block):
            rows = x[a : a + block]
            for b in range(a, n, block):
                cos = (rows @ x[b : b + block].T).float()
                hit = cos >= threshold
                if b == a:  # the diagonal block: each pair once, no video with itself
                    hit = torch.triu(hit, diagonal=1)
                i, j = torch.nonzero(hit, as_tuple=True)
                if len(i):
                    values = cos[i, j].cpu().tolist()
                    pairs += zip((i + a).tolist(), (j + b).tolist(), values, strict=True)
    return pairs


def groups_of(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components of the pairs (union-find), each sorted; singletons left out."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in {k for p in pairs for k in p[:2]}:
        members.setdefault(root(i), []).append(i)
    return sorted((sorted(m) for m in members.values()), key=lambda m: m[0])


def dedup(
    outputs: str | Path,
    *,
    threshold: float = 0.95,
    model: str | None = None,
    out: str | Path | None = None,
    block: int = 4096,
    device: str = "auto",
) -> dict:
    """Finds the near-duplicates among the videos of a run's outputs and writes the lists."""
    import torch

    from vqf.embeddings import load

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load(outputs, model=model)
    pairs = similar_pairs(loaded.vectors, threshold=threshold, block=block, device=device)
    groups = groups_of(len(loaded.ids), pairs)
    out = Path(out) if out else Path(outputs) / "dedup"
    out.mkdir(parents=True, exist_ok=True)
    ids = loaded.ids
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i, j, cos in sorted(pairs, key=lambda p: -p[2]):
            f.write(json.dumps({"a": ids[i], "b": ids[j], "cosine": round(cos, 5)}) + "\n")
    dropped: set[int] = set()
    with open(out / "groups.jsonl", "w", encoding="utf-8") as f:
        for members in groups:
            best = min(members, key=lambda k: (not loaded.keep[k], -loaded.duration_s[k], ids[k]))
            drop = [k for k in members if k != best]
            dropped.update(drop)
            f.write(json.dumps({"keep": ids[best], "drop": [ids[k] for k in drop]}) + "\n")
    (out / "keep.txt").write_text("".join(f"{v}\n" for k, v in enumerate(ids) if k not in dropped))
    return {
        "videos": len(ids),
        "model": loaded.model,
        "pairs": len(pairs),
        "groups": len(groups),
        "dropped": len(dropped),
        "device": device,
        "out": str(out),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outputs", help="a run's output folder (JSONL with embeddings/, or *.parquet)")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine at or above: duplicates")
    p.add_argument("--model", default=None, help="whose embeddings (default: backbone)")
    p.add_argument("--out", default=None, help="folder for the lists (default: OUTPUTS/dedup)")
    p.add_argument("--block", type=int, default=4096, help="rows per block of the search")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda")


def cmd_dedup(args: argparse.Namespace) -> int:
    summary = dedup(
        args.outputs,
        threshold=args.threshold,
        model=args.model,
        out=args.out,
        block=args.block,
        device=args.device,
    )
    print(
        f"{summary['videos']} videos ({summary['model']} embeddings, {summary['device']}): "
        f"{summary['pairs']} pairs >= {args.threshold:g} in {summary['groups']} groups; "
        f"{summary['dropped']} to drop, {summary['videos'] - summary['dropped']} kept"
    )
    print(f"lists: {summary['out']}/pairs.jsonl, groups.jsonl, keep.txt")
    return 0
