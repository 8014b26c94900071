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
    with pytest.raises(ValueError, match=r"kind must be one of \['un', 'pn', 'pn\*'\], got 'ln'"):
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


# Channels-first LayerNorms: as timm writes LayerNorm2d (timm.layers.norm), and as Hugging Face
# writes ConvNextLayerNorm, both the nn.LayerNorm subclass of transformers 5 and the plain
# nn.Module of earlier releases. Defined here: nothing is imported from either library.
class LayerNorm2d(nn.LayerNorm):
    """timm's: a LayerNorm over the channels of NCHW tensors, by permuting to NHWC and back."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class StemNorm(LayerNorm2d):
    """A subclass under another name: still channels first (the MRO is looked at)."""


class ConvNextLayerNorm(nn.LayerNorm):
    """transformers 5: an nn.LayerNorm subclass with a data_format."""

    def __init__(self, normalized_shape, *, eps=1e-6, data_format="channels_last", **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        self.data_format = data_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_first":
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


class LegacyConvNextLayerNorm(nn.Module):
    """transformers 4: no nn.LayerNorm, but normalized_shape, eps, data_format, weight, bias."""

    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                            self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNet(nn.Module):
    """A ConvNeXt-like stack: channels-first norms between convolutions, a channels-last one
    on the pooled features, and channels-first LayerNorms over two axes (left alone)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.stem_norm = LayerNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm1 = ConvNextLayerNorm(dim, data_format="channels_first")
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm2 = LegacyConvNextLayerNorm(dim, data_format="channels_first")
        self.conv3 = nn.Conv2d(dim, dim, 1)
        self.norm3 = StemNorm(dim, affine=False)
        self.two_axes = LayerNorm2d((dim, 4))  # over two axes: left alone
        self.legacy_two_axes = LegacyConvNextLayerNorm(dim, data_format="channels_first")
        self.legacy_two_axes.normalized_shape = (dim, 4)
        self.pooled_norm = ConvNextLayerNorm(dim)  # channels last, on (N, C)
        self.legacy_pooled_norm = LegacyConvNextLayerNorm(dim)  # channels last
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x))
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.head(self.legacy_pooled_norm(self.pooled_norm(x.mean((2, 3)))))


CHANNELS_FIRST = ["stem_norm", "norm1", "norm2", "norm3"]
CHANNELS_LAST = ["pooled_norm", "legacy_pooled_norm"]


@pytest.mark.parametrize("kind,cls", [("un", UnifiedNorm), ("pn", PowerNorm), ("pn*", PowerNorm)])
def test_swap_channels_first_layer_norms(kind, cls) -> None:
    torch.manual_seed(0)
    model = ConvNet()
    for module in model.modules():
        if getattr(module, "weight", None) is not None and module.weight.dim() == 1:
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    originals = dict(model.named_modules())
    model, swapped = swap_norms(model, kind=kind, warmup_iters=3)
    assert swapped == [*CHANNELS_FIRST, "pooled_norm", "legacy_pooled_norm"]
    modules = dict(model.named_modules())
    for name in swapped:
        new, old = modules[name], originals[name]
        assert type(new) is cls, f"{name} became {type(new).__name__}"
        assert new.channel_axis == (1 if name in CHANNELS_FIRST else -1), name
        expected_weight = old.weight if old.weight is not None else torch.ones(8)
        expected_bias = old.bias if old.bias is not None else torch.zeros(8)
        torch.testing.assert_close(new.weight.detach(), expected_weight.detach(), rtol=0, atol=0)
        torch.testing.assert_close(new.bias.detach(), expected_bias.detach(), rtol=0, atol=0)
    assert type(modules["two_axes"]) is LayerNorm2d
    assert type(modules["legacy_two_axes"]) is LegacyConvNextLayerNorm

    x = torch.randn(2, 3, 16, 16)
    model.train()
    for _ in range(4):
        model.zero_grad()
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.head.parameters())
    model.eval()
    assert model(x).shape == (2, 3)
    # eval along axis 1: the constant affine γ/sqrt(φ or ρ + eps)·x + β per channel
    features = torch.randn(2, 8, 4, 4)
    for name in CHANNELS_FIRST:
        norm = modules[name]
        scale, shift = norm.eval_affine()
        if getattr(norm, "group_scaling", False):
            continue
        torch.testing.assert_close(norm(features),
                                   features * scale[:, None, None] + shift[:, None, None])


def test_channels_first_names_and_formats() -> None:
    from unfold.nn.swap import layer_norm_channel_axis

    def named(name: str) -> nn.Module:
        return type(name, (nn.LayerNorm,), {})(4)

    for name in ("LayerNorm2d", "LayerNorm2dFp32", "LayerNormExp2d", "EomtLayerNorm2d",
                 "LayerNorm3d"):
        assert layer_norm_channel_axis(named(name)) == 1, name
    for name in ("LayerNorm", "LayerNormFp32", "LayerNorm2dish", "LayerNorm1d"):
        assert layer_norm_channel_axis(named(name)) == -1, name

    class SamLayerNorm2d(nn.Module):  # segment-anything's: weight, bias, eps, nothing else
        def __init__(self, num_channels: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
            self.eps = 1e-6

    assert layer_norm_channel_axis(SamLayerNorm2d(4)) is None, \
        "no normalized_shape nor data_format: not recognisably a LayerNorm, left alone"
    odd = ConvNextLayerNorm(4, data_format="channels_sideways")
    assert layer_norm_channel_axis(odd) is None
    assert layer_norm_channel_axis(LegacyConvNextLayerNorm(4, data_format="nchw")) is None
    assert layer_norm_channel_axis(nn.GroupNorm(1, 4)) is None


def test_swap_refuses_a_channel_axis_option() -> None:
    with pytest.raises(ValueError, match="swap_norms chooses channel_axis per layer"):
        swap_norms(ConvNet(), kind="un", channel_axis=1)


@pytest.mark.parametrize("version", [1, 2])
def test_swap_hugging_face_convnext(version: int) -> None:
    transformers = import_or_skip("transformers")
    prefix = "ConvNext" if version == 1 else "ConvNextV2"
    config = getattr(transformers, f"{prefix}Config")(num_channels=3, hidden_sizes=[8, 16],
                                                      depths=[1, 1], num_stages=2,
                                                      patch_size=2, image_size=16)
    torch.manual_seed(0)
    model = getattr(transformers, f"{prefix}Model")(config)
    model, swapped = swap_norms(model, kind="un", window_size=2, warmup_iters=2)
    assert swapped == ["embeddings.layernorm", "encoder.stages.0.layers.0.layernorm",
                       "encoder.stages.1.downsampling_layer.0",
                       "encoder.stages.1.layers.0.layernorm", "layernorm"]
    modules = dict(model.named_modules())
    axes = [modules[name].channel_axis for name in swapped]
    assert axes == [1, -1, 1, -1, -1], "the stem and downsampling norms are channels first"
    pixels = torch.randn(2, 3, 16, 16)
    model.train()
    for _ in range(3):
        model(pixels).last_hidden_state.sum().backward()
    model.eval()
    out = model(pixels)
    assert out.last_hidden_state.shape == (2, 16, 4, 4) and out.pooler_output.shape == (2, 16)
    assert torch.isfinite(out.pooler_output).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_layers_never_take_their_fused_layer_norm_path(norm_first) -> None:
    """nn.TransformerEncoderLayer's fused eval path (no grad, batch_first, even heads)
    computes LayerNorm from norm1/norm2's weights: after the swap it must not run."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model, swapped = swap_norms(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                                kind="un")
    assert len(swapped) == 4
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, UnifiedNorm):
                module.running_var.uniform_(0.5, 2.0)
                module.bias.normal_()
    model.eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        fused_allowed = model(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            reference = model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fused_allowed, reference, rtol=1e-6, atol=1e-6)
