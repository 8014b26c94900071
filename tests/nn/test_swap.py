"""swap_norms / reset_warmup / create_norm on a hand-built model, a Hugging Face BERT and a
timm ViT (the last two only when their packages import)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.optional import import_or_skip
from unfold.nn import NORM_KINDS, PowerNorm, UnifiedNorm, create_norm, reset_warmup, swap_norms


class SubclassedLayerNorm(nn.LayerNorm):
    """As timm and other libraries subclass LayerNorm (e.g. to cast to fp32)."""


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.norm2 = SubclassedLayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.norm2(x + self.fc(self.norm1(x)))


def _hand_built(dim: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = nn.ModuleDict({
        "blocks": nn.ModuleList([Block(dim), Block(dim)]),
        "plain": nn.LayerNorm(dim, elementwise_affine=False),
        "no_bias": nn.LayerNorm(dim, bias=False),
        "two_axes": nn.LayerNorm((4, dim)),  # over two axes: not per channel, left alone
        "head": nn.Linear(dim, 3),
    })
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) and module.weight is not None:
            nn.init.normal_(module.weight)
            if module.bias is not None:
                nn.init.normal_(module.bias)
    return model


SWAPPABLE = ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "plain",
             "no_bias"]


@pytest.mark.parametrize("kind,cls,group_scaling", [
    ("un", UnifiedNorm, None), ("pn", PowerNorm, True), ("pn*", PowerNorm, False)])
def test_swap_hand_built_model(kind, cls, group_scaling) -> None:
    model = _hand_built()
    originals = {name: m for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    model, swapped = swap_norms(model, kind=kind, warmup_iters=7)
    assert swapped == SWAPPABLE
    modules = dict(model.named_modules())
    for name in swapped:
        new, old = modules[name], originals[name]
        assert type(new) is cls, f"{name} became {type(new).__name__}"
        assert new.warmup_iters == 7, "constructor options must reach every swapped layer"
        if group_scaling is not None:
            assert new.group_scaling is group_scaling
        expected_weight = old.weight if old.weight is not None else torch.ones(8)
        expected_bias = old.bias if old.bias is not None else torch.zeros(8)
        torch.testing.assert_close(new.weight.detach(), expected_weight.detach(), rtol=0, atol=0)
        torch.testing.assert_close(new.bias.detach(), expected_bias.detach(), rtol=0, atol=0)
    assert type(modules["two_axes"]) is nn.LayerNorm
    assert not any(type(m) in (nn.LayerNorm, SubclassedLayerNorm)
                   for n, m in model.named_modules() if n in SWAPPABLE)


def test_swap_keeps_dtype_and_training_flag_and_model_still_trains() -> None:
    block = Block(8).double().eval()
    block, swapped = swap_norms(block, kind="un", window_size=2, warmup_iters=2)
    assert swapped == ["norm1", "norm2"]
    assert block.norm1.weight.dtype == torch.float64 and not block.norm1.training
    block.train()
    for _ in range(4):
        block(torch.randn(3, 5, 8, dtype=torch.float64)).sum().backward()
    assert int(block.norm1.num_steps) == 4
    assert reset_warmup(block) == 2
    assert int(block.norm1.num_steps) == 0 and int(block.norm2.num_steps) == 0
    assert float(block.norm1.running_var.sub(1).abs().max()) > 0, "statistics are kept"


def test_swapping_a_bare_layernorm_returns_the_new_layer() -> None:
    new, swapped = swap_norms(nn.LayerNorm(5), kind="pn*")
    assert isinstance(new, PowerNorm) and swapped == [""]


def test_swap_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"kind must be one of \['pn', 'pn\*', 'un'\], got 'ln'"):
        swap_norms(_hand_built(), kind="ln")


@pytest.mark.parametrize("kind", NORM_KINDS)
def test_create_norm_every_kind(kind) -> None:
    layer = create_norm(kind, 6)
    assert layer(torch.randn(2, 6)).shape == (2, 6)
    with pytest.raises(ValueError, match="unknown norm kind 'bn'; valid kinds: ln, un"):
        create_norm("bn", 6)


def test_swap_hugging_face_bert() -> None:
    transformers = import_or_skip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model, swapped = swap_norms(model, kind="un", window_size=2, warmup_iters=2)
    assert swapped == ["embeddings.LayerNorm",
                       "encoder.layer.0.attention.output.LayerNorm",
                       "encoder.layer.0.output.LayerNorm",
                       "encoder.layer.1.attention.output.LayerNorm",
                       "encoder.layer.1.output.LayerNorm"]
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    ids = torch.randint(0, 100, (2, 7))
    model.train()
    model(ids).last_hidden_state.sum().backward()
    model.eval()
    assert torch.isfinite(model(ids).last_hidden_state).all()


def test_swap_timm_vit() -> None:
    timm = import_or_skip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2, num_classes=10)
    model, swapped = swap_norms(model, kind="un", outlier_filtration=True)
    assert swapped == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2",
                       "norm"]
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
