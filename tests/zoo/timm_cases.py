"""timm architectures for the zoo harness (needs the `zoo` extra and a torchvision that loads:
`.ci/zoo-timm` installs both in `.venv-timm`). Every model is `pretrained=False` and shrunk
(32-64 px images, one or two blocks per stage, small widths), so nothing is downloaded and a
case exports and folds in seconds on a CPU.

What each case exercises:

* `timm-swin`: Swin (swin_tiny_patch4_window7_224 shrunk): 48 px / patch 4 = 12x12 tokens with
  window 5, so every stage but the last pads its windows (12 -> 15, 6 -> 10) and the second
  block of those stages shifts them (torch.roll by 2); two patch mergings (12x12 -> 6x6 ->
  3x3, where the window shrinks to the grid and nothing shifts), pre-norm, final norm ->
  average pool -> head.
* `timm-swin-4-stages`: Swin with all four stages at 112 px (28 -> 14 -> 7 -> 4 tokens a side,
  window 7): the TorchScript exporter computes the last stage's window padding from shapes
  three stages deep, which took 8 rounds of shape folding (6 left 2 norms, "pads are not
  constant", as Swin-T at 224 did).
* `timm-swinv2`: SwinV2 (swinv2_tiny_window8_256 shrunk), the same grid and windows: res-post
  norm (`x + norm(attn(x))`), patch merging reduces first and normalizes after.
* `timm-convnext`: ConvNeXt (convnext_tiny shrunk, conv_mlp=False): channels-first LayerNorm2d
  after the stem Conv, before each downsampling Conv and in the head (after the pool), and a
  channels-last LayerNorm after each 7x7 depthwise Conv (behind a permute), LayerScale.
* `timm-convnext-convmlp`: ConvNeXt with conv_mlp=True (convnext_atto's layout): every norm is
  a LayerNorm2d, the block MLP is 1x1 Convs.
* `timm-levit`: LeViT (levit_128s shrunk, distilled: two heads averaged in eval): its norms
  are BatchNorm2d after the stem Convs, BatchNorm1d after every bias-less Linear (applied
  through a flatten(0, 1) / reshape_as pair) and BatchNorm1d before the two head Linears.
  No LayerNorm, so no swap: the model is timm's with randomized BatchNorm constants, in eval.
  Both exporters fuse the stem's Conv+BatchNorm2d themselves: the 15 BatchNorm1d reach the
  fold.
* `timm-deit-distilled`: DeiT with a distillation token (deit_tiny_distilled_patch16_224
  shrunk): the final norm is read by two token selections, one per head.
* `timm-caformer`: CAFormer (caformer_s18's recipe shrunk: SepConv mixers in the first two
  stages, attention in the last two, LayerNorm2dNoBias / LayerNormNoBias, StarReLU MLPs
  without bias): every stage's downsampling Conv produces x, which norm1 and res_scale1 (a
  per-channel Mul, stages 3-4) both read: a fold of one into that Conv changed what the other
  saw (11.5% off before). Its minima: a padded downsampling Conv's reader keeps the shift
  (3), a bias-less query's shift (2), a bias-less fc1's shift before StarReLU (2).
* `timm-resmlp`: ResMLP (resmlp_12_224's layout shrunk; built from `MlpMixer` directly, as
  `resmlp_12_224` fixes patch size, depth and width): its norms are `Affine` modules (already a
  per-channel affine, exported as one Mul and one Add); the first of each block is read by a
  Linear over the token axis (behind a transpose), LayerScale after both branches.

The UN model of an LN-based case is the timm model with `swap_norms(kind="un")` and randomized
statistics; of LeViT and ResMLP, timm's own model with its BatchNorm / Affine constants
randomized (there is nothing to swap). The twin replaces the same modules by Identity. Both
are built from one seed, then every Linear/Conv gets informative weights (`_informative_weights`)
and the layer scales random values, identically in both. In eval every forward returns one
tensor (the distilled models average their two heads), so no wrapper is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from tests.zoo.harness import EXPORTERS, ZooCase, norms_to_identity, randomize_offline_norms
from unfold.nn import swap_norms

SEED = 0
BATCH = 2
GAIN = 0.5


def _image(px: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    def example() -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1234)
        return (torch.randn(BATCH, 3, px, px, generator=gen),)

    return example


def _randomize_params(model: nn.Module, leaf_names: tuple[str, ...], seed: int,
                      scale: float = 0.3, center: float = 1.0) -> None:
    """Per-channel constants (layer scales) that timm initializes to a tiny or uniform value:
    random ones, the same in the model and its twin, so that a branch they scale matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in leaf_names:
                param.copy_(center + scale * torch.randn(param.shape, generator=gen))


def _informative_weights(model: nn.Module, seed: int, gain: float = GAIN) -> None:
    """timm's initialization leaves little to check: MlpMixer zeroes its head (the output is
    exactly 0), most Linears get std 0.02 and zero biases, so residual branches barely reach
    the output. Every Linear and Conv gets weights of std gain/sqrt(fan-in) and random biases
    instead (the same in the model and its twin), so that a wrong fold anywhere shows (with
    `GAIN` the fp32 model stays within ~2e-7 of its float64 self: larger weights make Swin's
    attention ill-conditioned, and rounding alone then exceeds the tests' 1e-5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (gain / fan_in ** 0.5))
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Real per-channel constants for every BatchNorm (weight, bias, running mean and
    variance): timm initializes some LeViT BatchNorm weights to 0 (`bn_weight_init=0`), which
    would zero whole branches of the UN model while the twin keeps them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return model


def _layer_norm_model(name: str, layer_scales: tuple[str, ...] = (),
                      **kwargs: object) -> Callable[[bool], nn.Module]:
    """A timm model whose LayerNorms (LayerNorm2d included) become UnifiedNorms, or Identity."""

    def build(twin: bool) -> nn.Module:
        import timm

        torch.manual_seed(SEED)
        return _swapped_or_twin(timm.create_model(name, pretrained=False, **kwargs),
                                layer_scales, twin)

    return build


def _swapped_or_twin(model: nn.Module, layer_scales: tuple[str, ...], twin: bool) -> nn.Module:
    """A freshly built LayerNorm model (from SEED) as the UN model (norms swapped, statistics
    randomized) or as its twin (norms Identity), its weights informative either way."""
    _informative_weights(model, SEED + 2)
    _randomize_params(model, layer_scales, SEED + 1)
    if twin:
        norms_to_identity(model)
    else:
        model, _ = swap_norms(model, kind="un")
        randomize_offline_norms(model, SEED)
    return model.eval()


def _build_levit(twin: bool) -> nn.Module:
    import timm

    torch.manual_seed(SEED)
    # levit_128s's layout: stride-16 stem of four Conv+BN (64 px -> 4x4 tokens), a 4x4 stage
    # and an attention-subsampled 2x2 stage; LevitDistilled (the default) averages two heads.
    model = timm.create_model("levit_128s", pretrained=False, img_size=64, embed_dim=(32, 48),
                              key_dim=8, num_heads=(2, 3), depth=(1, 1), num_classes=10)
    # gain 1: with GAIN's smaller weights the tokens are so alike that dropping the shift of
    # the subsampling attention's query BatchNorm moves the output by only 5e-6 of its scale
    return batch_norms_or_twin(model, twin)


def batch_norms_or_twin(model: nn.Module, twin: bool) -> nn.Module:
    """A freshly built BatchNorm model with its BatchNorms given statistics of their own, or
    its twin (BatchNorms Identity); Linear/Conv weights at gain 1 either way."""
    _informative_weights(model, SEED + 2, gain=1.0)
    if twin:
        norms_to_identity(model, kinds=(nn.BatchNorm1d, nn.BatchNorm2d))
    else:
        randomize_batch_norms(model, SEED)
    return model.eval()


def _build_caformer(twin: bool) -> nn.Module:
    from timm.models.metaformer import (
        Attention,
        LayerNorm2dNoBias,
        LayerNormNoBias,
        MetaFormer,
        SepConv,
    )

    torch.manual_seed(SEED)
    model = MetaFormer(in_chans=3, num_classes=10, depths=(1, 1, 1, 1), dims=(16, 32, 64, 96),
                       token_mixers=(SepConv, SepConv, Attention, Attention),
                       norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2)
    return _swapped_or_twin(model, ("scale",), twin)


CAFORMER_EXTRA = ("a padded downsampling Conv reads 3 norms (their shift stays as an Add before "
                  "it), 2 attentions have bias-less queries, 2 bias-less fc1s read a norm "
                  "before StarReLU: one Add each")


def _build_resmlp(twin: bool) -> nn.Module:
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    torch.manual_seed(SEED)
    # resmlp_12_224 is MlpMixer(patch_size=16, num_blocks=12, embed_dim=384, mlp_ratio=4,
    # block_layer=ResBlock, norm_layer=Affine) and does not let kwargs override those.
    model = MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=32, mlp_ratio=4,
                     block_layer=partial(ResBlock, init_values=1.0), norm_layer=Affine,
                     num_classes=10)
    _informative_weights(model, SEED + 2)
    _randomize_params(model, ("ls1", "ls2"), SEED + 1)
    if twin:
        norms_to_identity(model, kinds=(Affine,))
    else:
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, Affine):
                    module.alpha.copy_(1 + 0.3 * torch.randn(module.alpha.shape, generator=gen))
                    module.beta.copy_(0.2 * torch.randn(module.beta.shape, generator=gen))
    return model.eval()


# The 15 BatchNorm1d of LeViT fold but for 7 shifts (one Add each) that nothing can take; the
# report names their 7 sites as left (1 partial, 6 stayed and composed into another).
LEVIT_EXTRA = (
    "7 BatchNorm1d shifts with nowhere to go, each one Add after a bias-less Linear (the twin, "
    "its BatchNorms Identity, has no bias there): 3 before a HardSwish (mlp.ln1 of stage 0's "
    "block and of stage 1's downsample and block), which a shift does not commute with, and 4 "
    "on attention queries/keys (qkv of both blocks, attn_downsample's kv and q), which meet "
    "q @ k^T, where a per-channel shift of q or k is no per-channel affine of the logits")

_SWIN = dict(img_size=48, patch_size=4, window_size=5, embed_dim=16, depths=(2, 2, 2),
             num_heads=(1, 2, 4), num_classes=10)
# four stages, 112 px / patch 4 = 28 -> 14 -> 7 -> 4 tokens a side: the last stage pads its 4x4
# grid to a 7x7 window, its pads computed (TorchScript) from shapes three stages deep
_SWIN_4 = dict(img_size=112, patch_size=4, window_size=7, embed_dim=16, depths=(1, 1, 2, 2),
               num_heads=(1, 1, 2, 2), num_classes=10)
_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10, ls_init_value=1.0)

# Every case exports with both exporters (timm 1.0.31, torch 2.14.1, onnxscript 0.7.2): none
# is dropped from `exporters`.
TIMM_CASES: list[ZooCase] = [
    ZooCase("timm-swin", _layer_norm_model("swin_tiny_patch4_window7_224", **_SWIN),
            _image(48), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-swin-4-stages", _layer_norm_model("swin_tiny_patch4_window7_224", **_SWIN_4),
            _image(112), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-swinv2", _layer_norm_model("swinv2_tiny_window8_256", **_SWIN),
            _image(48), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-convnext", _layer_norm_model("convnext_tiny", ("gamma",), **_CONVNEXT),
            _image(32), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-convnext-convmlp",
            _layer_norm_model("convnext_atto", ("gamma",), **_CONVNEXT),
            _image(32), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-levit", _build_levit, _image(64), ("pixels",), exporters=EXPORTERS,
            extra_ops={"*": Counter({"Add": 7})}, left_sites={"*": 7}, why_extra=LEVIT_EXTRA),
    ZooCase("timm-deit-distilled",
            _layer_norm_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2, num_classes=10),
            _image(32), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-resmlp", _build_resmlp, _image(32), ("pixels",), exporters=EXPORTERS),
    ZooCase("timm-caformer", _build_caformer, _image(64), ("pixels",), exporters=EXPORTERS,
            extra_ops={"*": Counter({"Add": 7})}, left_sites={"*": 7},
            why_extra=CAFORMER_EXTRA),
]
