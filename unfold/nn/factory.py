"""One switch for the normalization of a model: `create_norm("un", 384)`.

Kinds: "ln" (torch LayerNorm), "un" (UnifiedNorm), "pn" (PowerNorm as released, with group
scaling), "pn*" (PowerNorm without group scaling), "none" (Identity: the no-norm limit).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unfold.nn.power_norm import PowerNorm
from unfold.nn.unified_norm import UnifiedNorm
from unfold.norm_kinds import NORM_KINDS


def create_norm(kind: str, num_channels: int, **options: Any) -> nn.Module:
    """A normalization layer over the last axis of (..., num_channels) inputs (the offline
    kinds take `channel_axis=1` among the options for (N, num_channels, *spatial) inputs)."""
    if kind == "ln":
        return nn.LayerNorm(num_channels, **options)
    if kind == "un":
        return UnifiedNorm(num_channels, **options)
    if kind == "pn":
        return PowerNorm(num_channels, **options)
    if kind == "pn*":
        return PowerNorm(num_channels, group_scaling=False, **options)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}; valid kinds: {', '.join(NORM_KINDS)}")
