"""Put offline norms where a model has LayerNorms, and prepare them for fine-tuning.

`swap_norms` walks the module tree in the manner of timm's `freeze_batch_norm_2d`: every
LayerNorm over ONE trailing axis (`torch.nn.LayerNorm` and its subclasses, which is what timm
and Hugging Face models use) is replaced by a UnifiedNorm or PowerNorm with the same γ and β,
on the same device and dtype. LayerNorms over several axes are left alone (the offline norms
are per channel on the last axis only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unfold.nn._base import OfflineNorm
from unfold.nn.factory import NORM_KINDS, OFFLINE_KINDS, create_norm


def swap_norms(model: nn.Module, kind: str = "un", **options: Any) -> tuple[nn.Module, list[str]]:
    """Replace every single-axis LayerNorm of `model` (in place) by an offline norm.

    kind: "un" (UnifiedNorm), "pn" (PowerNorm with group scaling) or "pn*" (PowerNorm
    without it). `options` go to the new layer's constructor (e.g. window_size=4,
    outlier_filtration=True); eps keeps the new layer's default unless given, since the
    offline norms add it to a variance estimate, not to a per-token variance.

    Returns the model (the same object, or the new norm when `model` itself is a LayerNorm)
    and the qualified names of the swapped modules, in the order `named_modules` visits them.
    """
    if kind not in OFFLINE_KINDS:
        raise ValueError(f"kind must be one of {sorted(OFFLINE_KINDS)}, got {kind!r}")
    swapped: list[str] = []

    def convert(module: nn.Module, name: str) -> nn.Module:
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
            swapped.append(name)
            return _offline_twin(module, kind, options)
        for child_name, child in module.named_children():
            new_child = convert(child, f"{name}.{child_name}" if name else child_name)
            if new_child is not child:
                setattr(module, child_name, new_child)
        return module

    return convert(model, ""), swapped


def _offline_twin(layer_norm: nn.LayerNorm, kind: str, options: dict[str, Any]) -> nn.Module:
    reference = layer_norm.weight if layer_norm.weight is not None else layer_norm.bias
    factory: dict[str, Any] = {}
    if reference is not None:
        factory = {"device": reference.device, "dtype": reference.dtype}
    norm = create_norm(kind, layer_norm.normalized_shape[0], **factory, **options)
    assert isinstance(norm, OfflineNorm)
    with torch.no_grad():
        if layer_norm.weight is not None:
            norm.weight.copy_(layer_norm.weight)
        if layer_norm.bias is not None:
            norm.bias.copy_(layer_norm.bias)
    norm.train(layer_norm.training)
    return norm


def reset_warmup(model: nn.Module) -> int:
    """Set the step counter of every UnifiedNorm/PowerNorm back to 0; returns how many.

    The authors' advice after loading pretrained weights: fine-tuning then re-enters warm-up
    (batch statistics first, smoothing later). Running statistics and windows are kept.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, OfflineNorm):
            module.num_steps.zero_()
            count += 1
    return count


__all__ = ["NORM_KINDS", "reset_warmup", "swap_norms"]
