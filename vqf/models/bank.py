"""One instance of every model a recipe's enabled filters need, on one device.

Filters that name the same model share it (and so share its forward pass). Random weights
appear only where the recipe asks (`models.<name>.init: random`, or `filters.<name>.head:
random`); they are seeded by name, so every rank draws the same ones, and `random_models` /
`random_heads` say which, for the output rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError
from vqf.models.backbone import (
    Backbone,
    check_clip_size,
    pretrained_backbone_model,
    random_backbone_model,
    resolve_dtype,
    seed_for,
)
from vqf.models.detector import Detector, random_network, read_detector
from vqf.models.heads import load_head, make_head
from vqf.models.needs import ModelNeed

if TYPE_CHECKING:
    import torch

    from vqf.config import ModelConfig, Recipe

Resolver = Callable[[str], Path]


@dataclass
class ModelBank:
    """Backbones, detectors and heads by name, loaded once per device."""

    device: Any
    backbones: dict[str, Backbone] = field(default_factory=dict)
    detectors: dict[str, Detector] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    filter_models: dict[str, str] = field(default_factory=dict)
    random_models: tuple[str, ...] = ()
    random_heads: tuple[str, ...] = ()

    @classmethod
    def load(
        cls,
        *,
        recipe: Recipe,
        needs: list[ModelNeed],
        device: str | torch.device,
        resolve: Resolver | None = None,
        cache_dir: str | Path | None = None,
    ) -> ModelBank:
        """Loads every model the `needs` name, each once, then each filter's head.

        `needs` come from the filters (`vqf.filters.model_needs(recipe)`); `resolve(path)`
        turns a checkpoint path or URI into a local path (the engine's storage fetch);
        `cache_dir` holds ultralytics' config folder (default: a temporary folder).
        """
        import torch

        bank = cls(device=torch.device(device))
        for need in needs:
            model = _model_spec(recipe, need.filter, need.model)
            if model.kind != need.kind:
                raise ConfigError(
                    f"filter {need.filter!r} needs a {need.kind} model, but "
                    f"models.{need.model}.kind is {model.kind!r}",
                    hint=f"set filters.{need.filter}.model to a {need.kind} model",
                )
            bank.filter_models[need.filter] = need.model
        random_models = []
        for model_name in dict.fromkeys(bank.filter_models.values()):
            model = recipe.models[model_name]
            if model.init == "random":
                random_models.append(model_name)
            if model.kind == "vjepa2":
                bank.backbones[model_name] = bank._load_backbone(model_name, model, recipe, resolve)
            else:
                names = next(n.labels for n in needs if n.model == model_name)
                config_dir = Path(cache_dir) / "ultralytics" if cache_dir else None
                bank.detectors[model_name] = bank._load_detector(
                    model_name, model, names=names, resolve=resolve, config_dir=config_dir
                )
        bank.random_models = tuple(random_models)
        random_heads = []
        for need in needs:
            if not need.head_kind:
                continue
            model = recipe.models[need.model]
            if model.init == "random" or need.head_path == "random":
                random_heads.append(need.filter)
            bank.heads[need.filter] = bank._load_head(need, model, resolve)
        bank.random_heads = tuple(random_heads)
        return bank

    def backbone(self, name: str) -> Backbone:
        return self._pick(self.backbones, name, "backbone")

    def detector(self, name: str) -> Detector:
        return self._pick(self.detectors, name, "detector")

    def head(self, filter_name: str):
        return self._pick(self.heads, filter_name, "head of filter")

    def warm_up(self, *, frames: int, height: int, width: int, detect_size: int) -> None:
        """One call of every model on blank input, before any video: the first call's one-off
        costs (kernel selection, weight packing, CUDA context work) leave the first batch, and
        a model that cannot run at these sizes fails here rather than on a video."""
        import torch

        for backbone in self.backbones.values():
            backbone.encode(torch.zeros(1, frames, 3, height, width, device=self.device))
            backbone.finite = None  # the finite check is for the first real batch
        for detector in self.detectors.values():
            detector.detect(torch.zeros(1, 3, detect_size, detect_size, device=self.device))

    def _pick(self, items: dict, name: str, what: str):
        if name not in items:
            raise ConfigError(
                f"no {what} {name!r} in this model bank",
                hint=f"loaded: {', '.join(items) or 'none'}; is the filter enabled in the recipe?",
            )
        return items[name]

    def _load_backbone(
        self, name: str, model: ModelConfig, recipe: Recipe, resolve: Resolver | None
    ) -> Backbone:
        size = check_clip_size(height=recipe.sampling.height, width=recipe.sampling.width)
        dtype = resolve_dtype(model.dtype, self.device)
        if model.init == "random":
            net = random_backbone_model(
                model.size, crop_size=size, device=self.device, dtype=dtype, seed=seed_for(name)
            )
        else:
            path = _local(model.path, resolve, f"models.{name}.path")
            net = pretrained_backbone_model(path, crop_size=size, device=self.device, dtype=dtype)
        patch = int(net.config.patch_size)
        check_clip_size(height=size, width=size, patch_size=patch)
        return Backbone(name=name, model=net, device=self.device, dtype=dtype)

    def _load_detector(
        self, name: str, model: ModelConfig, *, names, resolve: Resolver | None, config_dir
    ) -> Detector:
        dtype = resolve_dtype(model.dtype, self.device, bf16=False)
        if model.init == "random":
            network = random_network(names=names, seed=seed_for(name), config_dir=config_dir)
        else:
            path = _local(model.path, resolve, f"models.{name}.path")
            network, names = read_detector(path, config_dir=config_dir)
        return Detector.from_network(
            network, name=name, names=names, device=self.device, dtype=dtype
        )

    def _load_head(self, need: ModelNeed, model: ModelConfig, resolve: Resolver | None):
        import torch

        name = need.filter
        backbone = self.backbones[need.model]
        if model.init == "random" or need.head_path == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(f"head:{name}"))
                head = make_head(
                    need.head_kind,
                    dim=backbone.dim,
                    labels=need.labels,
                    num_blocks=need.head_blocks,
                )
        else:
            head = load_head(_local(need.head_path, resolve, f"filters.{name}.head"))
        if head.dim != backbone.dim:
            raise ConfigError(
                f"head of filter {name!r} takes {head.dim}-wide tokens, backbone "
                f"{backbone.name!r} gives {backbone.dim}",
                hint="use a head trained on this backbone",
            )
        if tuple(head.labels) != tuple(need.labels):
            raise ConfigError(
                f"head of filter {name!r} has labels {list(head.labels)}, the filter {list(need.labels)}",
                hint="use a head trained for this filter",
            )
        return head.to(device=self.device, dtype=backbone.dtype).eval().requires_grad_(False)


def _model_spec(recipe: Recipe, filter_name: str, model_name: str) -> ModelConfig:
    if model_name not in recipe.models:
        raise ConfigError(
            f"filter {filter_name!r} uses model {model_name!r}, which the recipe does not define",
            hint=f"add models.{model_name} (path: ... or init: random), or set filters.{filter_name}.model",
        )
    return recipe.models[model_name]


def _local(path: str, resolve: Resolver | None, key: str) -> Path:
    """A local path for a checkpoint, through the engine's resolver when there is one."""
    if not path:
        raise ConfigError(
            f"{key} is empty",
            hint="give a local path or storage URI, or use init: random for a demo",
        )
    if resolve is not None:
        return Path(resolve(path))
    if "://" in path:
        raise ConfigError(
            f"{key} = {path!r} is a storage URI, but no resolver was given to fetch it",
            hint="load the bank through the engine, which fetches checkpoints",
        )
    return Path(path).expanduser()
