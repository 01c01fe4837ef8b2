"""`vqf models import`: Hugging Face folders and head state dicts in, vqf's layout out.

Every source is built here with random weights at tiny size (the Hugging Face ones through
transformers' own `save_pretrained`, with the published ViT-L configuration's fields), imported,
loaded through a recipe, and compared with the source model on the same clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqf.cli import main
from vqf.config import load_recipe
from vqf.errors import ConfigError
from vqf.filters import FILTERS, build_filters, load_models
from vqf.models.backbone import PRESETS
from vqf.models.bank import ModelBank
from vqf.models.importer import import_checkpoint

SIZE, FRAMES = 32, 8
SAMPLING = [f"sampling.height={SIZE}", f"sampling.width={SIZE}", f"sampling.whole_frames={FRAMES}"]
# The published facebook/vjepa2-vitl-fpc64-256 configuration (backbone.PRESETS["large"] and
# transformers' defaults for the rest), shrunk to a size a CPU test can run.
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    crop_size=SIZE,
    frames_per_clip=FRAMES,
    pred_hidden_size=32,
    pred_num_hidden_layers=1,
    pred_num_attention_heads=2,
    pred_num_mask_tokens=2,
    num_pooler_layers=2,
)


def vitl_config(**extra):
    from transformers import VJEPA2Config

    return VJEPA2Config(**{**PRESETS["large"], **TINY, **extra})


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter moved off its initial value (zero biases, unit norms), so that a key
    mapped to the wrong place shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def clip(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def bank_of(out: Path, *overrides: str) -> tuple[ModelBank, dict]:
    """The imported checkpoints loaded the way a run loads them: through a recipe."""
    recipe = load_recipe(out / "recipe.yaml", overrides=[*SAMPLING, *overrides])
    bank = load_models(recipe=recipe, device="cpu")
    return bank, build_filters(recipe=recipe, bank=bank)


def report(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (got - expected).abs().max().item()
    print(f"{what}: max abs diff {diff:.3g} over {expected.numel()} values")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def hf_backbone(tmp_path_factory) -> tuple[Path, nn.Module]:
    from transformers import VJEPA2Model

    torch.manual_seed(0)
    model = perturbed(VJEPA2Model(vitl_config()), seed=1)
    folder = tmp_path_factory.mktemp("hf") / "vjepa2-vitl-tiny"
    model.save_pretrained(folder)
    return folder, model


def test_hf_vjepa2_folder_gives_the_encoder_and_skips_the_predictor(tmp_path, hf_backbone):
    from safetensors import safe_open

    folder, source = hf_backbone
    result = import_checkpoint(folder, tmp_path / "ckpt")
    written = tmp_path / "ckpt" / "backbone" / "model.safetensors"
    with safe_open(str(written), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("encoder.") for k in keys)
    assert result.skipped == {"predictor.": sum(1 for k in source.state_dict() if "predictor" in k)}
    assert "skipped" in result.summary() and "predictor." in result.summary()
    config = json.loads((tmp_path / "ckpt" / "backbone" / "config.json").read_text())
    assert config["architectures"] == ["VJEPA2Model"] and config["hidden_size"] == 64

    bank, _ = bank_of(tmp_path / "ckpt", "filters.low_quality.head=random")
    backbone = bank.backbone("backbone")
    assert not hasattr(backbone.model, "predictor")  # never built, never run
    with torch.inference_mode():
        expected = source.get_vision_features(clip())
    report("V-JEPA 2 folder, encoder tokens", backbone.encode(clip()), expected)


def test_sharded_folders_import_the_same_encoder(tmp_path, hf_backbone):
    from safetensors.torch import load_file

    folder, source = hf_backbone
    sharded = tmp_path / "sharded"
    source.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    import_checkpoint(sharded, tmp_path / "a")
    import_checkpoint(folder, tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "backbone" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "backbone" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_folder_gives_encoder_and_attentive_head(tmp_path):
    from transformers import VJEPA2ForVideoClassification

    labels = FILTERS.get("vfx").labels
    config = vitl_config(num_labels=2, id2label=dict(enumerate(labels)))
    torch.manual_seed(2)
    source = perturbed(VJEPA2ForVideoClassification(config), seed=3)
    folder = tmp_path / "vjepa2-vitl-tiny-ssv2"
    source.save_pretrained(folder)

    result = import_checkpoint(folder, tmp_path / "ckpt", filter_name="vfx")
    assert result.kind == "classifier" and result.layout == "hf" and result.labels == labels
    assert list(result.skipped) == ["vjepa2.predictor."]
    fragment = result.fragment
    assert fragment["filters"]["vfx"]["model"] == "backbone"

    bank, filters = bank_of(tmp_path / "ckpt")
    head = bank.head("vfx")
    assert head.kind == "attentive" and head.num_blocks == 2 and head.num_heads == 2
    with torch.inference_mode():
        expected = source(pixel_values_videos=clip(1)).logits.softmax(dim=-1)
        got = filters["vfx"].probs(bank.backbone("backbone").encode(clip(1)))
    report("VJEPA2ForVideoClassification, probabilities", got, expected)

    # Labels that are not the filter's are refused, naming the fix.
    other = tmp_path / "other"
    VJEPA2ForVideoClassification(vitl_config(num_labels=2)).save_pretrained(other)
    with pytest.raises(ConfigError, match="--labels VFX_video,normal_video"):
        import_checkpoint(other, tmp_path / "ckpt2", filter_name="vfx")
    renamed = import_checkpoint(other, tmp_path / "ckpt2", filter_name="vfx", labels=labels)
    assert renamed.labels == labels


# -- V-JEPA's AttentiveClassifier (facebookresearch/jepa, src/models/attentive_pooler.py) -------
class JepaMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class JepaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class JepaBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), JepaAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), JepaMLP(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class JepaCrossAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = (
            nn.Linear(dim, dim),
            nn.Linear(dim, 2 * dim),
            nn.Linear(dim, dim),
        )

    def forward(self, q, x):
        b, n, c = q.shape
        q = self.q(q).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        k, v = (
            self.kv(x).reshape(b, x.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class JepaCrossBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.xattn = nn.LayerNorm(dim), JepaCrossAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), JepaMLP(dim, 4 * dim)

    def forward(self, q, x):
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class JepaPooler(nn.Module):
    def __init__(self, dim, heads, depth):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.cross_attention_block = JepaCrossBlock(dim, heads)
        self.blocks = nn.ModuleList(JepaBlock(dim, heads) for _ in range(depth - 1))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.cross_attention_block(self.query_tokens.repeat(len(x), 1, 1), x)


class JepaClassifier(nn.Module):
    def __init__(self, dim, heads, depth, classes):
        super().__init__()
        self.pooler, self.linear = JepaPooler(dim, heads, depth), nn.Linear(dim, classes)

    def forward(self, x):
        return self.linear(self.pooler(x).squeeze(1))


class MeanLinear(nn.Module):
    """The seed's linear probe: mean-pooled tokens, one linear layer."""

    def __init__(self, dim, classes):
        super().__init__()
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(x.mean(dim=1))


def _hf_pooler(seed):
    from transformers import VJEPA2ForVideoClassification

    torch.manual_seed(seed)
    model = perturbed(VJEPA2ForVideoClassification(vitl_config(num_labels=2)), seed=seed)
    state = {
        k: v for k, v in model.state_dict().items() if k.startswith(("pooler.", "classifier."))
    }
    return (lambda x: model.classifier(model.pooler(x))), state


@pytest.mark.parametrize(
    "filter_name, layout, suffix",
    [
        ("simcam", "vjepa", ".pt"),  # a V-JEPA eval checkpoint: classifiers[0], DDP prefixes
        ("low_quality", "linear", ".pth"),  # the seed's linear probe under state_dict
        ("rov", "linear", ".bin"),  # a bare state dict
        ("vfx", "hf", ".safetensors"),  # transformers' pooler + classifier, saved alone
    ],
)
def test_head_files_import_and_score_like_their_source(
    tmp_path, hf_backbone, filter_name, layout, suffix
):
    from safetensors.torch import save_file

    folder, backbone = hf_backbone
    labels = FILTERS.get(filter_name).labels
    torch.manual_seed(4)
    path = tmp_path / f"head{suffix}"
    if layout == "vjepa":
        source = perturbed(JepaClassifier(64, 4, depth=3, classes=len(labels)), seed=5)
        state = {f"module.{k}": v for k, v in source.state_dict().items()}
        torch.save({"classifiers": [state], "epoch": 3, "lr": 1e-3}, path)
    elif layout == "linear":
        source = perturbed(MeanLinear(64, len(labels)), seed=6)
        state = source.state_dict()
        torch.save({"state_dict": state} if suffix == ".pth" else state, path)
    else:
        source, state = _hf_pooler(seed=7)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    out = tmp_path / "ckpt"
    model = "rov_backbone" if filter_name == "rov" else "backbone"
    import_checkpoint(folder, out, name=model)
    num_heads = 4 if layout == "vjepa" else (2 if layout == "hf" else 0)
    result = import_checkpoint(path, out, filter_name=filter_name, num_heads=num_heads)
    assert result.layout == layout and result.labels == labels

    bank, filters = bank_of(out)
    with torch.inference_mode():
        expected = source(backbone.get_vision_features(clip(2))).softmax(dim=-1)
        got = filters[filter_name].probs(bank.backbone(model).encode(clip(2)))
    report(f"{layout} head from {suffix}, probabilities", got, expected)


def test_unknown_layout_is_refused_with_its_keys_and_the_way_to_map_them(tmp_path):
    path = tmp_path / "probe.pt"
    torch.save({"probe.w": torch.zeros(2, 64), "probe.b": torch.zeros(2)}, path)
    with pytest.raises(ConfigError) as e:
        import_checkpoint(path, tmp_path / "ckpt", filter_name="vfx")
    message = str(e.value)
    assert "probe.w (2, 64)" in message and "probe.b (2,)" in message
    assert "--rename" in message and "linear, vqf, vjepa, hf" in message
    # Mapped onto the linear layout, the same file imports.
    renamed = import_checkpoint(
        path,
        tmp_path / "ckpt",
        filter_name="vfx",
        rename=["probe.w=linear.weight", "probe.b=linear.bias"],
    )
    assert renamed.layout == "linear"


def test_a_head_without_labels_or_with_the_wrong_count_is_refused(tmp_path):
    path = tmp_path / "head.pt"
    torch.save({"weight": torch.zeros(3, 64), "bias": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="carries no labels"):
        import_checkpoint(path, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="3 classes"):
        import_checkpoint(path, tmp_path / "ckpt", filter_name="vfx")
    several = tmp_path / "several.pt"
    torch.save({"classifiers": [{"linear.weight": torch.zeros(2, 64)}] * 2}, several)
    with pytest.raises(ConfigError, match="--index 0..1"):
        import_checkpoint(several, tmp_path / "ckpt", filter_name="vfx")


TOUCHED: list[str] = []


def _touch(marker: str) -> None:
    TOUCHED.append(marker)


class _Sneaky:
    def __reduce__(self):
        return (_touch, ("unpickled",))


def test_pickles_are_never_run_beyond_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"linear.weight": torch.zeros(2, 64), "extra": _Sneaky()}, path)
    with pytest.raises(ConfigError, match="weights_only"):
        import_checkpoint(path, tmp_path / "ckpt", filter_name="vfx")
    assert TOUCHED == []


def test_cli_import_prints_what_it_wrote(tmp_path, hf_backbone, capsys):
    folder, _ = hf_backbone
    assert main(["models", "import", str(folder), str(tmp_path / "ckpt"), "--name", "enc"]) == 0
    out = capsys.readouterr().out
    assert "imported backbone" in out and "skipped" in out and "enc:" in out
    assert (tmp_path / "ckpt" / "enc" / "model.safetensors").is_file()
    assert main(["models", "import", str(tmp_path / "nowhere"), str(tmp_path / "ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
