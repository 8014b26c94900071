"""The benchmark architecture factories: one switch picks the norm, every other weight is the
same for a given seed, and the UN build's eval graph exports to ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sample_models.bert import bert_base
from sample_models.swin import swin_tiny_like
from sample_models.vit import deit_tiny_patch16_224, digits_vit, vit_small_patch16_224
from unfold.nn import UnifiedNorm

# Small settings of each factory so the tests stay fast; the defaults are the real shapes.
SMALL = {
    "vit_small_patch16_224": (vit_small_patch16_224, dict(depth=2)),
    "deit_tiny_patch16_224": (deit_tiny_patch16_224, dict(depth=2)),
    "swin_tiny_like": (swin_tiny_like, dict(img_size=56, dim=24, depths=(2, 2), heads=(3, 6))),
    "bert_base": (bert_base, dict(dim=64, depth=2, heads=4, ffn_dim=128, vocab=100)),
    "digits_vit": (digits_vit, {}),
}
NORM_TYPES = {"ln": nn.LayerNorm, "un": UnifiedNorm, "none": nn.Identity}


def _inputs(name: str, model: nn.Module) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    if name == "bert_base":
        ids = torch.randint(0, 100, (2, 9), generator=gen)
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1, 6:] = 0
        return ids, mask
    return (torch.randn(2, model.in_chans, model.img_size, model.img_size, generator=gen),)


@pytest.mark.parametrize("name", list(SMALL))
def test_one_switch_same_other_weights(name: str) -> None:
    factory, kwargs = SMALL[name]
    models = {kind: factory(norm=kind, seed=3, **kwargs) for kind in NORM_TYPES}
    for kind, model in models.items():
        norms = [m for n, m in model.named_modules() if n.split(".")[-1].startswith(
            ("norm", "patch_norm", "embedding_norm"))]
        assert norms and all(type(m) is NORM_TYPES[kind] for m in norms), \
            f"{name}({kind}) has norms {sorted({type(m).__name__ for m in norms})}"
    reference = {n: p for n, p in models["none"].named_parameters()}
    for kind in ("ln", "un"):
        params = {n: p for n, p in models[kind].named_parameters()
                  if n not in reference and "norm" in n}
        shared = {n: p for n, p in models[kind].named_parameters() if n in reference}
        assert set(shared) == set(reference), f"{name}({kind}) differs beyond its norms"
        for n, p in shared.items():
            assert torch.equal(p, reference[n]), f"{name}({kind}).{n} differs from the twin"
        assert params, f"{name}({kind}) should have norm parameters"
    for model in models.values():
        model.eval()
        out = model(*_inputs(name, model))
        assert torch.isfinite(out).all()


def test_default_shapes_are_the_benchmark_shapes() -> None:
    vit = vit_small_patch16_224(norm="none")
    assert (vit.patch_embed.out_channels, len(vit.blocks), vit.pos_embed.shape[1]) == (384, 12, 197)
    deit = deit_tiny_patch16_224(norm="none")
    assert (deit.patch_embed.out_channels, len(deit.blocks)) == (192, 12)
    swin = swin_tiny_like(norm="none")
    assert swin.patch_embed.out_channels == 96 and swin.stages[0].resolution ** 2 == 3136
    bert = bert_base(norm="none")
    assert (bert.word_embeddings.embedding_dim, len(bert.layers)) == (768, 12)
