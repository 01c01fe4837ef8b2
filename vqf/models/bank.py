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

if TYPE_CHECKING:
    import torch

    from vqf.config import FilterConfig, ModelConfig, Recipe
    from vqf.filters.base import Filter

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
        device: str | torch.device,
        resolve: Resolver | None = None,
        cache_dir: str | Path | None = None,
    ) -> ModelBank:
        """Loads every model an enabled filter names, each once, then each filter's head.

        `resolve(path)` turns a checkpoint path or URI into a local path (the engine's storage
        fetch); `cache_dir` holds ultralytics' config folder (default: a temporary folder).
        """
        import torch

        from vqf.filters import DetectionFilter, enabled_filters

        bank = cls(device=torch.device(device))
        filters = enabled_filters(recipe)
        for name, fcls in filters.items():
            spec = recipe.filters[name]
            model_name = spec.model or fcls.default_model
            if not model_name:
                continue  # a weight-free filter: nothing to load
            model = _model_spec(recipe, name, model_name)
            wanted = "yolo" if issubclass(fcls, DetectionFilter) else "vjepa2"
            if model.kind != wanted:
                raise ConfigError(
                    f"filter {name!r} needs a {wanted} model, but models.{model_name}.kind is {model.kind!r}",
                    hint=f"set filters.{name}.model to a {wanted} model",
                )
            bank.filter_models[name] = model_name
        random_models = []
        for model_name in dict.fromkeys(bank.filter_models.values()):
            model = recipe.models[model_name]
            if model.init == "random":
                random_models.append(model_name)
            if model.kind == "vjepa2":
                bank.backbones[model_name] = bank._load_backbone(model_name, model, recipe, resolve)
            else:
                users = [f for f, m in bank.filter_models.items() if m == model_name]
                names = filters[users[0]].labels
                config_dir = Path(cache_dir) / "ultralytics" if cache_dir else None
                bank.detectors[model_name] = bank._load_detector(
                    model_name, model, names=names, resolve=resolve, config_dir=config_dir
                )
        bank.random_models = tuple(random_models)
        random_heads = []
        for name, fcls in filters.items():
            if not fcls.head_kind or name not in bank.filter_models:
                continue
            spec = recipe.filters[name]
            model = recipe.models[bank.filter_models[name]]
            if model.init == "random" or spec.head == "random":
                random_heads.append(name)
            bank.heads[name] = bank._load_head(name, fcls, spec, model, resolve)
        bank.random_heads = tuple(random_heads)
        return bank

    def backbone(self, name: str) -> Backbone:
        return self._pick(self.backbones, name, "backbone")

    def detector(self, name: str) -> Detector:
        return self._pick(self.detectors, name, "detector")

    def head(self, filter_name: str):
        return self._pick(self.heads, filter_name, "head of filter")

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

    def _load_head(
        self,
        name: str,
        fcls: type[Filter],
        spec: FilterConfig,
        model: ModelConfig,
        resolve: Resolver | None,
    ):
        import torch

        backbone = self.backbones[self.filter_models[name]]
        if model.init == "random" or spec.head == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(f"head:{name}"))
                head = make_head(
                    fcls.head_kind,
                    dim=backbone.dim,
                    labels=fcls.labels,
                    num_blocks=fcls.head_blocks,
                )
        else:
            head = load_head(_local(spec.head, resolve, f"filters.{name}.head"))
        if head.dim != backbone.dim:
            raise ConfigError(
                f"head of filter {name!r} takes {head.dim}-wide tokens, backbone "
                f"{backbone.name!r} gives {backbone.dim}",
                hint="use a head trained on this backbone",
            )
        if tuple(head.labels) != tuple(fcls.labels):
            raise ConfigError(
                f"head of filter {name!r} has labels {list(head.labels)}, the filter {list(fcls.labels)}",
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
