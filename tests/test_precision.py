"""Precision: the dtype policy per device, the recipe's spellings, the finite check, NVTX ranges."""

from __future__ import annotations

import pytest
import torch

from vqf.bench.profile import _precision as precision_of
from vqf.bench.profile import _precision_line
from vqf.config import ModelConfig, Recipe, build
from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.filters import load_models
from vqf.models.backbone import dtype_name, has_bf16, resolve_dtype
from vqf.models.bank import ModelBank

from .test_models import clips, tiny_recipe


def test_recipe_dtypes_and_their_old_spellings():
    for given, canonical in [
        ("auto", "auto"),
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("fp16", "fp16"),
        ("float16", "fp16"),
        ("fp32", "fp32"),
        ("float32", "fp32"),
    ]:
        assert build(ModelConfig, {"dtype": given}, "models.backbone").dtype == canonical
    with pytest.raises(ConfigError, match="models.backbone.dtype = 'half'") as e:
        build(Recipe, {"models": {"backbone": {"dtype": "half"}}}, "recipe")
    assert "auto, bf16, fp16, fp32" in str(e.value)


def test_auto_is_fp32_on_the_cpu_and_names_are_taken_as_given():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float16
    assert resolve_dtype("fp32", "cpu") is torch.float32
    with pytest.raises(ConfigError, match="allowed: auto, bf16, fp16, fp32"):
        resolve_dtype("int8", "cpu")
    assert [dtype_name(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == [
        "bf16",
        "fp16",
        "fp32",
    ]


@pytest.mark.gpu
def test_auto_is_bf16_on_gpus_that_have_it_and_fp16_for_the_detector():
    expected = torch.bfloat16 if has_bf16("cuda") else torch.float16
    assert resolve_dtype("auto", "cuda") is expected
    assert resolve_dtype("auto", "cuda", bf16=False) is torch.float16


def test_bf16_backbone_runs_and_the_cast_happens_after_the_move(monkeypatch):
    """fp16 clips (what DALI emits) into a bf16 backbone: moved first, then cast there."""
    recipe = tiny_recipe(("vfx",), backbone=ModelConfig(init="random", dtype="bf16"))
    bank = load_models(recipe=recipe, device="cpu")
    backbone = bank.backbone("backbone")
    assert backbone.dtype is torch.bfloat16
    assert next(backbone.model.parameters()).dtype is torch.bfloat16
    moves = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moves.append((self.dtype, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    tokens = backbone.encode(clips(2).half())
    monkeypatch.undo()
    assert tokens.dtype is torch.bfloat16 and backbone.finite is True
    # first the device move (dtype unchanged), then the cast on that device
    assert moves[0][0] is torch.float16 and moves[0][1][0] == backbone.device
    assert moves[1][1] == (torch.bfloat16,)
    probs = bank.head("vfx")(tokens)
    assert probs.dtype is torch.float32 and torch.isfinite(probs).all()


def _overflowing(dtype: str) -> ModelBank:
    """A tiny backbone whose final norm scales past fp16's range (65504)."""
    recipe = tiny_recipe(("vfx",), backbone=ModelConfig(init="random", dtype=dtype))
    bank = load_models(recipe=recipe, device="cpu")
    with torch.no_grad():
        bank.backbone("backbone").model.encoder.layernorm.weight.mul_(1e6)
    return bank


def test_first_batch_with_inf_tokens_fails_with_a_hint():
    backbone = _overflowing("fp16").backbone("backbone")
    with pytest.raises(VideoError) as e:
        backbone.encode(clips(2))
    assert e.value.type is ErrorType.MODEL_FAILED and e.value.stage is Stage.MODEL
    assert "backbone 'backbone' in fp16 gave" in e.value.message
    assert "models.backbone.dtype: fp32" in e.value.hint
    assert backbone.finite is False
    with pytest.raises(VideoError):  # still checked: the next batch is no better
        backbone.encode(clips(1, seed=3))
    # The same weights in fp32 stay finite, and after one clean batch the check stops.
    fine = _overflowing("fp32").backbone("backbone")
    tokens = fine.encode(clips(2))
    assert torch.isfinite(tokens).all() and fine.finite is True


def test_broken_clips_are_not_blamed_on_the_precision():
    bank = load_models(recipe=tiny_recipe(("vfx",)), device="cpu")
    backbone = bank.backbone("backbone")
    bad = clips(1)
    bad[0, 0, 0, 0, 0] = float("nan")
    backbone.encode(bad)
    assert backbone.finite is None  # nothing learned; the next batch is checked
    backbone.encode(clips(1))
    assert backbone.finite is True


def test_profile_reports_each_backbones_precision_and_finite_check():
    class Rank:
        bank = _overflowing("fp16")

    rank = Rank()
    assert precision_of(rank) == {"backbone": {"dtype": "fp16", "finite": None}}
    with pytest.raises(VideoError):
        rank.bank.backbone("backbone").encode(clips(1))
    result = {"precision": precision_of(rank)}
    assert _precision_line(result) == (
        "precision: backbone fp16 (INF/NaN tokens: set models.backbone.dtype: fp32)"
    )
    fine = {"precision": {"backbone": {"dtype": "bf16", "finite": True}}}
    assert _precision_line(fine) == "precision: backbone bf16 (finite)"


def test_stages_are_nvtx_ranges_on_cuda_only(monkeypatch):
    import torch.cuda.nvtx as nvtx

    from vqf.engine.stats import RankStats

    calls = []
    monkeypatch.setattr(nvtx, "range_push", lambda msg: calls.append(("push", msg)))
    monkeypatch.setattr(nvtx, "range_pop", lambda: calls.append(("pop",)))
    with RankStats(device="cpu").stage("decode", label="v1"):
        pass
    assert calls == []
    stats = RankStats(device="cuda:0")
    with stats.stage("decode", label="v1"):
        with stats.stage("backbone:backbone", items=4):
            pass
    with pytest.raises(RuntimeError), stats.stage("write"):
        raise RuntimeError("a failing stage still closes its range")
    assert calls == [
        ("push", "decode v1"),
        ("push", "backbone:backbone"),
        ("pop",),
        ("pop",),
        ("push", "write"),
        ("pop",),
    ]
    assert stats.stage_items["backbone:backbone"] == 4
