"""What UnifiedNorm and PowerNorm share: per-channel γ and β over one channel axis (the last,
(..., C), or the second, (N, C, *spatial)), running statistics, a step counter, and an eval mode
that is a constant affine."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# The channel axes the offline norms take: -1, inputs (..., C) (tokens, channels-last images);
# 1, inputs (N, C, *spatial) (channels-first images, as Conv2d writes them).
CHANNEL_AXES = (-1, 1)


def check_channel_axis(channel_axis: Any) -> int:
    """`channel_axis` as an int, if it is -1 or 1; a ValueError naming both otherwise."""
    valid = isinstance(channel_axis, int) and not isinstance(channel_axis, bool)
    if not valid or channel_axis not in CHANNEL_AXES:
        raise ValueError(
            "channel_axis must be -1 (channels last, inputs (..., C)) or 1 (channels first, "
            f"inputs (N, C, *spatial)), got {channel_axis!r}"
        )
    return int(channel_axis)


class OfflineNorm(nn.Module):
    """Base of the offline normalizations: statistics learned in training, constant in eval.

    With `channel_axis=1` a layer takes (N, C, *spatial) inputs and is, by construction, the
    channels-last layer applied to `x.movedim(1, -1)` with its output moved back: training runs
    the same code on that view (a view, not a copy: the output then has the input's memory
    layout), and eval applies the same constant affine broadcast as (C, 1, ..., 1), with no
    transpose to export.
    """

    def __init__(self, num_channels: int, factory: dict[str, Any], channel_axis: int = -1) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.channel_axis = check_channel_axis(channel_axis)
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
        """(a, b) of the eval-mode per-channel affine y = a⊙x + b, each of shape (C,)."""
        raise NotImplementedError

    @property
    def channels_first(self) -> bool:
        return self.channel_axis == 1

    def _check_channels(self, x: Tensor) -> None:
        if self.channels_first:
            if x.dim() < 2 or x.shape[1] != self.num_channels:
                raise ValueError(
                    f"{type(self).__name__}({self.num_channels}, channel_axis=1) expects "
                    f"inputs shaped (N, {self.num_channels}, ...), got {tuple(x.shape)}"
                )
        elif x.dim() < 1 or x.shape[-1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}({self.num_channels}) expects inputs shaped "
                f"(..., {self.num_channels}), got {tuple(x.shape)}"
            )

    def _per_channel(self, vector: Tensor, x: Tensor) -> Tensor:
        """A (C,) vector shaped to broadcast along x's channel axis: (C,) channels last,
        (C, 1, ..., 1) channels first (one 1 per spatial axis)."""
        if not self.channels_first or x.dim() <= 2:
            return vector
        return vector.reshape((-1,) + (1,) * (x.dim() - 2))

    def _to_channels_last(self, x: Tensor) -> Tensor:
        """x with its channel axis last: x itself, or a view (N, *spatial, C) of it."""
        return x.movedim(1, -1) if self.channels_first else x

    def _from_channels_last(self, y: Tensor) -> Tensor:
        return y.movedim(-1, 1) if self.channels_first else y

    def _extra_repr_axis(self) -> str:
        return ", channel_axis=1" if self.channels_first else ""
