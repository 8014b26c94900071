"""What UnifiedNorm and PowerNorm share: per-channel γ and β over the last axis of (..., C)
inputs, running statistics, a step counter, and an eval mode that is a constant affine."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class OfflineNorm(nn.Module):
    """Base of the offline normalizations: statistics learned in training, constant in eval."""

    def __init__(self, num_channels: int, factory: dict[str, Any]) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.empty(num_channels, **factory))  # γ
        self.bias = nn.Parameter(torch.empty(num_channels, **factory))  # β
        self.num_steps: Tensor  # t, training steps taken
        self.register_buffer(
            "num_steps", torch.zeros((), dtype=torch.long, device=factory.get("device"))
        )

    def reset_running_stats(self) -> None:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """(a, b) of the eval-mode per-channel affine y = a⊙x + b."""
        raise NotImplementedError

    def _check_channels(self, x: Tensor) -> None:
        if x.dim() < 1 or x.shape[-1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}({self.num_channels}) expects inputs shaped "
                f"(..., {self.num_channels}), got {tuple(x.shape)}"
            )
