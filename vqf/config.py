"""Recipes: YAML files loaded into typed dataclasses, with command-line overrides.

The dataclasses are the schema. `load_recipe` reads a YAML file with `yaml.safe_load`,
applies overrides (`section.key=value` and the seed's flags), and builds frozen
dataclasses; an unknown key or a bad value raises ConfigError naming the key, the value and
what is allowed. `resolved_dict` gives the final config (secrets masked) to write next to the
outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vqf.errors import ConfigError

GB = 1024**3
MB = 1024**2


@dataclass(frozen=True)
class OssConfig:
    """OSS access. Credentials come from the environment (OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET, OSS_ENDPOINT) unless given here; they are never written out."""

    endpoint: str = ""
    # Requests are signed with OSS's V4 scheme, which needs the region id (cn-hangzhou);
    # empty = OSS_REGION, else derived from an Alibaba Cloud endpoint (oss-cn-hangzhou...).
    # `signature: v1` only for servers that do not speak V4.
    region: str = ""
    signature: Literal["v4", "v1"] = "v4"
    access_key_id: str = ""
    access_key_secret: str = ""
    retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    connect_timeout_s: float = 10.0
    timeout_s: float = 300.0
    part_size_mb: float = 16.0
    parallel_parts: int = 4
    parallel_min_mb: float = 64.0


@dataclass(frozen=True)
class StorageConfig:
    """Tiers, tried in order: CPFS, Alluxio (when the row asks), OSS, plain paths and URLs."""

    cpfs_root: str = ""
    alluxio_root: str = ""
    local_root: str = ""
    allow_http: bool = True
    oss: OssConfig = field(default_factory=OssConfig)
    cache_dir: str = ""
    cache_budget_gb: float = 180.0
    max_video_mb: float = 4096.0
    http_timeout_s: float = 120.0
    http_retries: int = 3
    timeout_s: float = 600.0  # one video's fetch, every tier included; past it: TIMEOUT row
    tiers: tuple[str, ...] = ("cpfs", "alluxio", "oss", "local", "http")


@dataclass(frozen=True)
class SamplingConfig:
    """The seed's sampling (DESIGN.md section 3) and the clip geometry."""

    whole_frames: int = 48
    window_s: float = 4.0
    stride_s: float = 3.0
    window_frames: int = 48
    tail_min_s: float = 1.0
    min_duration_s: float = 0.0
    min_frames: int = 1
    height: int = 256
    width: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    detect_frames: int = 12
    detect_size: int = 960
    dense_fps: float = 8.0  # every part of the video decoded at least this often (0 = off)

    def __post_init__(self):
        if not 0 <= self.dense_fps <= 240:
            raise ConfigError(
                f"sampling.dense_fps = {self.dense_fps!r} is out of range",
                hint="use 0 (off) to 240 frames a second; 8 lets cuts see every shot",
            )


@dataclass(frozen=True)
class DecodeConfig:
    """How videos are decoded. `route: auto` picks per video from the probe.

    The rank streams: `workers` threads fetch and probe, the detect stage takes `batch_size`
    videos per detector call, `pipelines` decode lanes (one DALI pipeline each, one video at
    a time) push chunks of at most `chunk_frames` frames, and decoded frames in flight stay
    under `memory_budget_gb` of host and `device_memory_budget_gb` of GPU memory.
    """

    route: Literal["auto", "nvdec", "dali-cpu", "pyav"] = "auto"
    batch_size: int = 4  # videos whose detection frames share one detector call
    workers: int = 2  # fetch + probe threads
    detect_workers: int = 0  # threads decoding detection frames; 0 = auto: 2 on a CPU, 4 on a GPU
    prefetch: int = 4  # probed videos waiting for detection / decode
    pipelines: int = 0  # decode lanes; 0 = auto: 2 on a CPU, 8 on a GPU (NVDEC sessions)
    threads: int = 2  # DALI worker threads per pipeline
    timeout_s: float = 120.0  # a stage making no progress this long on a video: TIMEOUT
    max_pixels: int = 7680 * 4320
    max_frames_decoded: int = 0  # refuse plans needing more decoded frames; 0 = no limit
    chunk_frames: int = 64  # frames per trip through the graph
    memory_budget_gb: float = 1.0  # host bytes of decoded frames in flight
    device_memory_budget_gb: float = 8.0  # GPU bytes of decoded frames in flight
    # pyav route: swscale shrinks to this multiple of the clip size (1: to the clip itself, the
    # graph then only normalises; 2: the graph's antialiased resize does the last step); 0 = off
    prescale: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """One model instance per GPU. `path` is a local folder or a storage URI (oss://...).

    `dtype: auto` is bf16 on GPUs that have it (Ampere and later), fp16 on older CUDA GPUs and
    fp32 on the CPU; the old spellings float16, bfloat16 and float32 are read as fp16, bf16, fp32.
    """

    kind: Literal["vjepa2", "yolo"] = "vjepa2"
    path: str = ""
    init: Literal["pretrained", "random"] = "pretrained"
    size: Literal["tiny", "large", "giant"] = "tiny"
    batch_size: int = 8
    dtype: Literal["auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"] = "auto"

    def __post_init__(self):
        object.__setattr__(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))


DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class ExportConfig:
    """A cropped copy of each video with a safe crop, written to `target`: an
    `oss://bucket/prefix/` or a local folder. Only `abnormal_region` finds crops."""

    enable: bool = False
    target: str = ""
    codec: str = "libx264"  # checked against this FFmpeg build when the export pool starts
    crf: int = 23
    workers: int = 2
    queue: int = 4  # jobs waiting for a worker before `submit` blocks

    def __post_init__(self):
        if self.enable and not self.target.strip():
            raise ConfigError(
                "export.enable is true but export.target is empty",
                hint="set export.target to oss://bucket/prefix/ or a local folder",
            )
        scheme, sep, rest = self.target.partition("://")
        if sep and (scheme.lower() != "oss" or not rest.partition("/")[0]):
            raise ConfigError(
                f"export.target = {self.target!r} is not a bucket or a folder",
                hint="allowed: oss://bucket/prefix/ or a local folder path",
            )
        if not 0 <= self.crf <= 51:
            raise ConfigError(f"export.crf = {self.crf!r} is out of range", hint="allowed: 0..51")
        if self.workers < 1 or self.queue < 1:
            raise ConfigError(
                f"export.workers = {self.workers!r} and export.queue = {self.queue!r}"
                " must be at least 1",
                hint="allowed: 1 or more",
            )


@dataclass(frozen=True)
class FilterConfig:
    """A filter's switch and options. `options` is checked by the filter's own Config."""

    enable: bool = True
    model: str = ""
    head: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass(frozen=True)
class EngineConfig:
    """The rank process. `gpus`: ranks `vqf run` spawns on this machine when `--gpus` is not
    given (0 = one rank); torchrun's environment, when present, decides instead."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: int = 0
    clip_batch: int = 8
    writer_flush_rows: int = 16
    writer_flush_s: float = 1.0  # a group of rows is written once its first has waited this long
    # threads given up on (stuck in C code past a deadline) before the rank drains its writer
    # and exits with code 75 for its launcher to restart it cleanly
    max_stuck_threads: int = 8
    max_rows: int = 0
    progress_every_s: float = 10.0
    # the crash journal: a local folder (required when outputs are odps://); "" = next to
    # local outputs. A video the process died in max_attempts times gets a `crashed` row.
    state_dir: str = ""
    max_attempts: int = 2
    # the process group's own timeout, for the few blocking collective calls left; waits for
    # peers (barriers, shared values) poll the store with no deadline and heartbeats instead
    dist_timeout_s: float = 300.0
    # SIGTERM or a first Ctrl-C: no new video; the ones in flight get this long to finish
    # (inside Kubernetes' 30 s), then the rest are left for the rerun, charged nothing
    grace_s: float = 20.0


@dataclass(frozen=True)
class OdpsSinkConfig:
    """Each rank commits its rows in windows, so a crash loses at most one window."""

    commit_every_rows: int = 10000
    commit_every_s: float = 600.0
    block_rows: int = 10000


@dataclass(frozen=True)
class EmbeddingsConfig:
    """Each backbone's tokens of a video, mean-pooled and L2-normalised, written with its row
    (a list column in Parquet outputs, `embeddings/*.npy` + an index beside JSONL outputs).
    `windows`: also one vector per segment window."""

    enable: bool = False
    pool: Literal["mean"] = "mean"
    dtype: Literal["float16", "float32"] = "float16"
    windows: bool = False


@dataclass(frozen=True)
class SinksConfig:
    """Options of the output table formats."""

    odps: OdpsSinkConfig = field(default_factory=OdpsSinkConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)


@dataclass(frozen=True)
class DemoConfig:
    """The demo generates its own videos and input table when `generate` is set."""

    generate: bool = False
    dir: str = "runs/demo"


@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    tables: str = ""
    outputs: str = ""
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    models: dict[str, ModelConfig] = field(default_factory=dict)
    filters: dict[str, FilterConfig] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


# The seed's command-line flags, mapped onto recipe keys.
SEED_FLAGS = {
    "tables": "tables",
    "outputs": "outputs",
    "vfx_enable": "filters.vfx.enable",
    "com_enable": "filters.simcam.enable",
    "rov_enable": "filters.rov.enable",
    "low_quality_enable": "filters.low_quality.enable",
}

SECRET_KEYS = ("access_key_id", "access_key_secret", "password", "token")


def load_recipe(path: str | Path, *, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Reads a recipe file and applies `key.path=value` overrides in order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"recipe {str(path)!r} does not exist", hint="pass a file from pipelines/"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not key=value", hint="e.g. engine.clip_batch=4"
            )
        data = apply_override(data, key.strip(), yaml.safe_load(value) if value != "" else "")
    recipe = build(Recipe, data, "recipe")
    _check_references(recipe)
    return recipe


def apply_override(data: dict, dotted: str, value: Any) -> dict:
    """A copy of `data` with `dotted` (a.b.c) set to `value`; the input is not mutated."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if rest:
        inner = out.get(head) or {}
        if not isinstance(inner, dict):
            raise ConfigError(f"cannot set {dotted!r}: {head!r} is not a section")
        out[head] = apply_override(inner, rest, value)
    else:
        out[head] = value
    return out


def seed_flag_overrides(flags: dict[str, str | None]) -> list[str]:
    """Turns the seed's flags (`--vfx_enable true`) into `key=value` overrides."""
    out = []
    for flag, value in flags.items():
        if value is None:
            continue
        key = SEED_FLAGS[flag]
        if key.endswith(".enable"):
            lowered = str(value).strip().lower()
            if lowered not in ("true", "false"):
                raise ConfigError(
                    f"--{flag} {value!r} is not a boolean", hint="allowed values: true, false"
                )
            value = lowered
        out.append(f"{key}={value}")
    return out


def build(cls: Any, data: Any, where: str) -> Any:
    """Builds `cls` (a dataclass or a typing form) from plain YAML data, strictly."""
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if dataclasses.is_dataclass(cls):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown key {where}.{unknown[0]} (value {data[unknown[0]]!r})",
                hint=f"allowed keys in {where}: {', '.join(names)}",
            )
        return cls(**{k: build(hints[k], v, f"{where}.{k}") for k, v in data.items()})
    if origin is Literal:
        if data not in args:
            raise ConfigError(
                f"{where} = {data!r} is not allowed",
                hint=f"allowed values: {', '.join(map(str, args))}",
            )
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], data, where)
    if origin is dict:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a mapping, got {data!r}")
        return {str(k): build(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if origin in (tuple, list):
        if not isinstance(data, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {data!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(data) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {data!r}")
            return tuple(build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
        item = args[0] if args else Any
        return origin(build(item, v, f"{where}[{i}]") for i, v in enumerate(data))
    if cls is Any:
        return data
    if cls is bool:
        if isinstance(data, bool):
            return data
        if isinstance(data, str) and data.lower() in ("true", "false"):
            return data.lower() == "true"
        raise ConfigError(
            f"{where} = {data!r} is not a boolean", hint="allowed values: true, false"
        )
    if cls is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ConfigError(f"{where} = {data!r} is not an integer")
        return data
    if cls is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ConfigError(f"{where} = {data!r} is not a number")
        return float(data)
    if cls is str:
        if isinstance(data, (dict, list)):
            raise ConfigError(f"{where} = {data!r} is not a string")
        return "" if data is None else str(data)
    raise ConfigError(f"{where}: unsupported type {cls!r}")


def _check_references(recipe: Recipe) -> None:
    for name, spec in recipe.filters.items():
        if spec.enable and spec.model and spec.model not in recipe.models:
            raise ConfigError(
                f"filters.{name}.model = {spec.model!r} names no model",
                hint=f"models in this recipe: {', '.join(recipe.models) or 'none'}",
            )
        if spec.export.enable and name != "abnormal_region":
            raise ConfigError(
                f"filters.{name}.export.enable = true, but {name!r} finds no crop to export",
                hint="set export under filters.abnormal_region",
            )
    if recipe.engine.gpus < 0:
        raise ConfigError(
            f"engine.gpus = {recipe.engine.gpus} is not allowed",
            hint="0 (one rank) or the number of ranks to spawn on this machine",
        )
    if recipe.decode.batch_size < 1 or recipe.engine.clip_batch < 1:
        raise ConfigError("decode.batch_size and engine.clip_batch must be at least 1")
    d = recipe.decode
    if d.detect_workers < 0 or recipe.engine.grace_s < 0:
        raise ConfigError(
            f"decode.detect_workers = {d.detect_workers}, engine.grace_s = "
            f"{recipe.engine.grace_s}: neither may be negative"
        )
    if d.pipelines < 0 or d.threads < 1 or d.chunk_frames < 1 or d.workers < 1:
        raise ConfigError(
            f"decode.pipelines = {d.pipelines}, threads = {d.threads}, workers = {d.workers}, "
            f"chunk_frames = {d.chunk_frames}: pipelines must be >= 0 (0 = auto), the others >= 1"
        )
    if d.memory_budget_gb <= 0 or d.device_memory_budget_gb <= 0:
        raise ConfigError(
            f"decode.memory_budget_gb = {d.memory_budget_gb}, device_memory_budget_gb = "
            f"{d.device_memory_budget_gb}: both must be positive"
        )
    if recipe.sampling.whole_frames < 1 or recipe.sampling.window_frames < 1:
        raise ConfigError("sampling.whole_frames and sampling.window_frames must be at least 1")
    if recipe.sampling.stride_s <= 0 or recipe.sampling.window_s <= 0:
        raise ConfigError("sampling.window_s and sampling.stride_s must be positive")
    positive = {
        "engine.max_attempts": recipe.engine.max_attempts,
        "engine.dist_timeout_s": recipe.engine.dist_timeout_s,
        "storage.timeout_s": recipe.storage.timeout_s,
        "sinks.odps.commit_every_rows": recipe.sinks.odps.commit_every_rows,
        "sinks.odps.commit_every_s": recipe.sinks.odps.commit_every_s,
        "sinks.odps.block_rows": recipe.sinks.odps.block_rows,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} = {value!r} must be positive")


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The final config as plain data, secrets masked: what is written next to the outputs."""
    return _mask(dataclasses.asdict(recipe))


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v else _mask(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return value


def write_resolved(recipe: Recipe, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved_dict(recipe), sort_keys=False))
