"""Put offline norms where a model has LayerNorms, and prepare them for fine-tuning.

`swap_norms` walks the module tree in the manner of timm's `freeze_batch_norm_2d` and replaces
every LayerNorm over ONE channel axis by a UnifiedNorm or PowerNorm with the same γ and β, on
the same device and dtype, and on the same channel axis:

* channels last, (..., C): `torch.nn.LayerNorm` and its subclasses (what timm and Hugging Face
  transformers use), and Hugging Face's `data_format="channels_last"` LayerNorms;
* channels first, (N, C, *spatial), which become `channel_axis=1` layers: timm's
  `LayerNorm2d` family (`LayerNorm2d`, `LayerNorm2dFp32`, `LayerNormExp2d`: nn.LayerNorm
  subclasses that permute NCHW to NHWC and back), recognised by class name, and any module with
  `data_format == "channels_first"` (Hugging Face ConvNext/ConvNextV2/SAM/... LayerNorms).

LayerNorms over several axes are left alone (the offline norms are per channel).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from unfold.nn._base import OfflineNorm
from unfold.nn.factory import create_norm
from unfold.norm_kinds import NORM_KINDS, OFFLINE_KINDS

# Class names of the nn.LayerNorm subclasses that normalize axis 1 of (N, C, H, W) inputs:
# timm.layers.norm's LayerNorm2d, LayerNorm2dFp32 and LayerNormExp2d, the copies other
# libraries keep under a prefix (Hugging Face's EomtLayerNorm2d, VideomtLayerNorm2d, ...), and
# their 3-d (N, C, D, H, W) counterparts.
# A subclass of one of them counts too (the whole MRO is looked at). Matched by name so that
# timm is never imported.
CHANNELS_FIRST_LAYER_NORM = re.compile(r"LayerNorm(Exp)?[23]d(Fp32)?$")


def swap_norms(model: nn.Module, kind: str = "un", **options: Any) -> tuple[nn.Module, list[str]]:
    """Replace every single-axis LayerNorm of `model` (in place) by an offline norm.

    kind: "un" (UnifiedNorm), "pn" (PowerNorm with group scaling) or "pn*" (PowerNorm
    without it). `options` go to the new layer's constructor (e.g. window_size=4,
    outlier_filtration=True); eps keeps the new layer's default unless given, since the
    offline norms add it to a variance estimate, not to a per-token variance.

    What is swapped, and on which channel axis:

    * a `torch.nn.LayerNorm` (or subclass) with a one-element `normalized_shape` becomes a
      channels-last layer (inputs (..., C)), unless it is channels first (below);
    * channels first, a layer with `channel_axis=1` (inputs (N, C, *spatial)):
      an `nn.LayerNorm` subclass whose class, or a base class of it, is named like timm's
      channels-first LayerNorms (`LayerNorm2d`, `LayerNorm2dFp32`, `LayerNormExp2d`, with any
      prefix, or 3d for 2d: the regex `CHANNELS_FIRST_LAYER_NORM`), and any module
      with `data_format == "channels_first"` and a one-element `normalized_shape` (Hugging
      Face's ConvNextLayerNorm and its copies, nn.LayerNorm subclasses or not);
    * a module that is not an nn.LayerNorm but has `data_format == "channels_last"` and a
      one-element `normalized_shape` (older Hugging Face ConvNextLayerNorm) becomes a
      channels-last layer.

    γ and β are copied (ones/zeros when the LayerNorm has none). LayerNorms over several axes,
    and modules with any other `data_format`, are left alone. The channel axis is chosen per
    layer, so `channel_axis` is not an accepted option.

    Returns the model (the same object, or the new norm when `model` itself is a LayerNorm)
    and the qualified names of the swapped modules, in the order `named_modules` visits them.
    """
    if kind not in OFFLINE_KINDS:
        raise ValueError(f"kind must be one of {list(OFFLINE_KINDS)}, got {kind!r}")
    if "channel_axis" in options:
        raise ValueError(
            "swap_norms chooses channel_axis per layer (1 for channels-first LayerNorms such "
            "as timm's LayerNorm2d, -1 otherwise); do not pass it"
        )
    swapped: list[str] = []

    def convert(module: nn.Module, name: str) -> nn.Module:
        channel_axis = layer_norm_channel_axis(module)
        if channel_axis is not None:
            swapped.append(name)
            return _offline_twin(module, kind, options, channel_axis)
        for child_name, child in module.named_children():
            new_child = convert(child, f"{name}.{child_name}" if name else child_name)
            if new_child is not child:
                setattr(module, child_name, new_child)
        return module

    result = convert(model, "")
    _keep_off_fused_paths(result)
    if swapped:
        _record_in_config(result, kind, options)
    return result, swapped


# (unfold.load.pretrained_dir.SWAP_KEY: that module imports transformers' world lazily; this
# one must not import unfold.load)
SWAP_KEY = "unfold_swap"


def _record_in_config(model: nn.Module, kind: str, options: dict[str, Any]) -> None:
    """A Hugging Face model's config (what save_pretrained writes as config.json) records the
    swap, so that the directory says what it holds: unfold.nn.from_pretrained and `unfold
    convert DIR` apply it again. Options that JSON cannot hold are not recorded (nor the
    swap: a half record would rebuild another model)."""
    import json

    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_json_string", None)):
        return
    record = {"kind": kind, "options": dict(options)}
    try:
        json.dumps(record)
    except (TypeError, ValueError):
        return
    setattr(config, SWAP_KEY, record)


def _keep_module_path(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing: its presence is what counts (see below)."""
    return None


def _keep_off_fused_paths(model: nn.Module) -> None:
    """torch.nn.TransformerEncoderLayer has a fused inference path (eval, no grad, batch_first,
    even heads) that computes LayerNorm itself from `norm1.weight` and `norm1.bias`: a layer
    whose norms were swapped would silently normalize with LayerNorm again there. It is not
    taken where a submodule has a forward hook, so each swapped norm inside one gets a no-op
    pre-hook; and nn.TransformerEncoder's nested-tensor path is turned off for them."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer):
            for child in module.modules():
                if isinstance(child, OfflineNorm) and not any(
                        hook is _keep_module_path for hook in child._forward_pre_hooks.values()):
                    child.register_forward_pre_hook(_keep_module_path)
        if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(m, OfflineNorm) for m in module.modules()):
            module.use_nested_tensor = False


def layer_norm_channel_axis(module: nn.Module) -> int | None:
    """The channel axis (-1 or 1) of a single-axis LayerNorm `swap_norms` replaces, or None
    for a module it leaves alone (see `swap_norms`)."""
    shape = getattr(module, "normalized_shape", None)
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 1:
        return None
    data_format = getattr(module, "data_format", None)
    if data_format == "channels_first":
        return 1
    if isinstance(module, nn.LayerNorm):
        if data_format not in (None, "channels_last"):
            return None  # a layout this helper does not know: leave it
        if data_format is None and _named_channels_first(type(module)):
            return 1
        return -1
    if data_format == "channels_last":
        return -1
    return None


def _named_channels_first(cls: type) -> bool:
    for base in cls.__mro__:
        if base is nn.LayerNorm:
            return False
        if CHANNELS_FIRST_LAYER_NORM.search(base.__name__):
            return True
    return False


def _offline_twin(
    layer_norm: nn.Module, kind: str, options: dict[str, Any], channel_axis: int
) -> nn.Module:
    weight = getattr(layer_norm, "weight", None)
    bias = getattr(layer_norm, "bias", None)
    reference = weight if weight is not None else bias
    factory: dict[str, Any] = {}
    if reference is not None:
        factory = {"device": reference.device, "dtype": reference.dtype}
    num_channels = int(layer_norm.normalized_shape[0])  # type: ignore[index]
    norm = create_norm(kind, num_channels, channel_axis=channel_axis, **factory, **options)
    assert isinstance(norm, OfflineNorm)
    with torch.no_grad():
        if weight is not None:
            norm.weight.copy_(weight.reshape(-1))
        if bias is not None:
            norm.bias.copy_(bias.reshape(-1))
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


__all__ = ["CHANNELS_FIRST_LAYER_NORM", "NORM_KINDS", "layer_norm_channel_axis", "reset_warmup",
           "swap_norms"]
