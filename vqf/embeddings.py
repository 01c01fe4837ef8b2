"""Backbone embeddings of each video, written with its row (`sinks.embeddings` in a recipe).

The backbone's tokens already exist after its pass over a clip; this module only pools them
(mean over tokens), L2-normalises and copies the vectors to the host, once per batch. A
video's vector per backbone is its whole clip's; a backbone that reads only windows gets the
normalised mean of its windows. Reversed windows are skipped (the same frames).

Three entry points, so the engine needs one line at each place:
- `Embeddings.of(recipe)` then `.add(owners, tokens, model=)` in the model stage, after the
  backbone ran on a batch (`owners`: each row's (job, clip));
- `attach(record, job)` in the recorder, as a judged video's record is made;
- `with_embeddings(sink, ...)` when the sink opens: Parquet shards get list columns
  `embedding_<model>` (and `window_embeddings_<model>`, `duration_s`), JSONL outputs get
  `embeddings/part-RRRRR-SSSSSS-<model>.npy` files and `embeddings/index-RRRRR.jsonl` lines
  naming each vector's file and row, written before the rows themselves.

`load(outputs)` reads them back for `vqf dedup`.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqf.config import EmbeddingsConfig, Recipe
from vqf.errors import ConfigError, TableError

KEY = "_embeddings"  # the record key the vectors travel under from the recorder to the sink


@dataclass
class _Collected:
    """One video's vectors so far: model -> whole clip's vector, model -> {window: vector}."""

    config: EmbeddingsConfig
    whole: dict[str, np.ndarray] = field(default_factory=dict)
    windows: dict[str, dict[int, tuple[float, float, np.ndarray]]] = field(default_factory=dict)


# job -> its vectors; an entry goes with its job, so a failed video leaves nothing behind
_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class Embeddings:
    """The model stage's side: pools a batch's tokens and keeps each video's vectors."""

    def __init__(self, config: EmbeddingsConfig):
        self.config = config

    @classmethod
    def of(cls, recipe: Recipe) -> Embeddings | None:
        config = recipe.sinks.embeddings
        return cls(config) if config.enable else None

    def add(self, owners: list[tuple[Any, Any]], tokens, *, model: str, stats=None) -> None:
        """`tokens` (N, L, D) of a batch whose row i is clip owners[i] = (job, clip); the time
        is counted as the `embeddings` stage of `stats` (what `vqf profile` shows)."""
        from contextlib import nullcontext

        rows = [i for i, (_, clip) in enumerate(owners) if clip.kind != "inverse"]
        if not rows:
            return
        timer = stats.stage("embeddings", items=len(rows)) if stats is not None else nullcontext()
        with timer:
            self._add(owners, rows, tokens, model=model)

    def _add(self, owners, rows: list[int], tokens, *, model: str) -> None:
        import torch

        with torch.inference_mode():
            pooled = tokens[rows].float().mean(dim=1)
            vectors = torch.nn.functional.normalize(pooled, dim=-1)
            host = vectors.to(getattr(torch, self.config.dtype)).cpu().numpy()
        with _LOCK:
            for vec, i in zip(host, rows, strict=True):
                job, clip = owners[i]
                got = _STORE.get(job)
                if got is None:
                    got = _STORE[job] = _Collected(self.config)
                if clip.kind == "whole":
                    got.whole[model] = vec
                else:
                    got.windows.setdefault(model, {})[int(clip.index)] = (
                        float(clip.start_s),
                        float(clip.end_s),
                        vec,
                    )


def _normalised_mean(vectors: list[np.ndarray], dtype) -> np.ndarray:
    mean = np.mean(np.stack(vectors).astype(np.float32), axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(dtype)


def attach(record: dict, job) -> None:
    """Puts the video's vectors on its output record (nothing when none were collected)."""
    with _LOCK:
        got = _STORE.pop(job, None)
    if got is None:
        return
    models = {}
    for model in sorted(set(got.whole) | set(got.windows)):
        windows = [got.windows[model][k] for k in sorted(got.windows.get(model, {}))]
        video = got.whole.get(model)
        if video is None:
            video = _normalised_mean([w[2] for w in windows], got.config.dtype)
        models[model] = {"video": video, "windows": windows if got.config.windows else []}
    prepared = getattr(job, "prepared", None)
    duration = float(getattr(getattr(prepared, "info", None), "duration_s", 0.0) or 0.0)
    record[KEY] = {"duration_s": duration, "models": models}


# -- writing --------------------------------------------------------------------------------


def with_embeddings(sink, *, path: Path | None, rank: int):
    """`sink`, writing the records' vectors too: Parquet shards carry them as columns; JSONL
    outputs get the sidecar files. Only local outputs can hold them."""
    from vqf.tables.parquet import ParquetSink

    if path is None:
        raise ConfigError(
            "sinks.embeddings needs local outputs (a JSONL or *.parquet folder)",
            hint="write to a local folder, or set sinks.embeddings.enable=false",
        )
    if isinstance(sink, ParquetSink):
        return sink  # it adds the columns itself (parquet_columns)
    return SidecarSink(sink, directory=Path(path), rank=rank)


def parquet_columns(records: list[dict]) -> list[tuple[str, Any]]:
    """(name, pyarrow array) of each vector column for `records` (null where a row has none)."""
    import pyarrow as pa

    payloads = [r.get(KEY) for r in records]
    models = sorted({m for p in payloads if p for m in p["models"]})
    if not models:
        return []
    out = [("duration_s", pa.array([p["duration_s"] if p else None for p in payloads]))]
    for model in models:
        got = [p["models"].get(model) if p else None for p in payloads]
        sample = next(g["video"] for g in got if g is not None)
        item = pa.from_numpy_dtype(sample.dtype)
        out.append(
            (
                f"embedding_{model}",
                pa.array([g["video"] if g else None for g in got], type=pa.list_(item)),
            )
        )
        if any(g and g["windows"] for g in got):
            windows = [[w[2] for w in g["windows"]] if g else None for g in got]
            out.append(
                (f"window_embeddings_{model}", pa.array(windows, type=pa.list_(pa.list_(item))))
            )
    return out


class SidecarSink:
    """A JSONL sink whose records' vectors go to `.npy` files and an index beside it."""

    def __init__(self, inner, *, directory: Path, rank: int):
        self.inner = inner
        self.uri = inner.uri
        self.folder = directory / "embeddings"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.index = self.folder / f"index-{rank:05d}.jsonl"
        self._seq = 1 + max(
            (int(p.stem.split("-")[2]) for p in self.folder.glob(f"part-{rank:05d}-*.npy")),
            default=-1,
        )
        if hasattr(inner, "tick"):
            self.tick = inner.tick

    def done_rows(self):
        return self.inner.done_rows()

    def close(self) -> None:
        self.inner.close()

    def write(self, records: list[dict]) -> None:
        payloads = [(r, r[KEY]) for r in records if r.get(KEY)]
        if payloads:
            self._write_vectors(payloads)
        self.inner.write(records)

    def _write_vectors(self, payloads: list[tuple[dict, dict]]) -> None:
        lines = []
        by_model: dict[str, list[np.ndarray]] = {}
        for record, payload in payloads:
            for model, got in payload["models"].items():
                rows = by_model.setdefault(model, [])
                name = f"part-{self.rank:05d}-{self._seq:06d}-{model}.npy"
                entry = {"video_id": record["video_id"], "model": model, "file": name}
                lines.append({**entry, "row": len(rows), "duration_s": payload["duration_s"]})
                rows.append(got["video"])
                for index, (start, end, vec) in enumerate(got["windows"]):
                    lines.append({**entry, "row": len(rows), "window": index, "span": [start, end]})
                    rows.append(vec)
        for model, rows in by_model.items():
            final = self.folder / f"part-{self.rank:05d}-{self._seq:06d}-{model}.npy"
            temp = final.with_name(f".{final.name}.tmp")
            with open(temp, "wb") as f:
                np.save(f, np.stack(rows))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, final)
        with open(self.index, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        self._seq += 1


# -- reading --------------------------------------------------------------------------------


@dataclass
class Loaded:
    """Video vectors of one backbone, with what picks the one to keep among duplicates."""

    model: str
    ids: list[str]
    vectors: np.ndarray  # (N, D), L2-normalised
    keep: list[bool]  # the row's verdict (True when it has none)
    duration_s: list[float]


def load(outputs: str | Path, *, model: str | None = None) -> Loaded:
    """The video vectors a run wrote into `outputs` (the last one of a video wins)."""
    from vqf.tables import open_source

    outputs = Path(outputs)
    verdicts: dict[str, bool] = {}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    durations: dict[str, float] = {}
    sidecar = (outputs / "embeddings").is_dir()
    source = open_source(str(outputs))
    for record in source.read(start=0, count=source.count()):
        vid = str(record.get("video_id"))
        info = record.get("result_info") or "{}"
        verdicts[vid] = bool(
            (json.loads(info) if isinstance(info, str) else info).get("keep", True)
        )
        for key, value in record.items():
            if key.startswith("embedding_") and value is not None:
                vectors.setdefault(key[len("embedding_") :], {})[vid] = np.asarray(
                    value, np.float32
                )
        if record.get("duration_s") is not None:
            durations[vid] = float(record["duration_s"])
    if sidecar:
        _load_sidecar(outputs / "embeddings", vectors, durations)
    if not vectors:
        raise TableError(
            f"{str(outputs)!r} holds no embeddings",
            hint="run with --set sinks.embeddings.enable=true",
        )
    if model is None:
        model = "backbone" if "backbone" in vectors else sorted(vectors)[0]
    if model not in vectors:
        raise ConfigError(f"no embeddings of model {model!r}", hint=f"found: {sorted(vectors)}")
    ids = sorted(vectors[model])
    keep = [verdicts.get(v, True) for v in ids]
    stacked = np.stack([vectors[model][v] for v in ids]) if ids else np.zeros((0, 0))
    return Loaded(model, ids, stacked, keep, [durations.get(v, 0.0) for v in ids])


def _load_sidecar(folder: Path, vectors: dict, durations: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    for index in sorted(folder.glob("index-*.jsonl")):
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill: its row was never written either
            if "window" in entry or not (folder / entry["file"]).is_file():
                continue
            if entry["file"] not in arrays:
                arrays[entry["file"]] = np.load(folder / entry["file"], mmap_mode="r")
            vec = np.asarray(arrays[entry["file"]][entry["row"]], np.float32)
            vectors.setdefault(entry["model"], {})[entry["video_id"]] = vec
            durations[entry["video_id"]] = float(entry.get("duration_s") or 0.0)
