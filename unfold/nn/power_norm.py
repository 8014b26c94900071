"""PowerNorm (Shen et al., "PowerNorm: Rethinking Batch Normalization in Transformers",
ICML 2020, arXiv 2003.07845), as its authors released it.

PN normalizes each channel by a running quadratic mean φ (no mean subtraction). Its released
form first applies *group scaling* to every position, x̃ = x / sqrt(mean over the group of x² +
1e-5), in training AND eval: a per-token RMSNorm without gain, computed online, which no fold
can remove. With `group_scaling=False` (PN*) eval is the constant affine

    y = a ⊙ x + b,   a = γ / sqrt(φ + eps),   b = β

Training follows `UN_SPEC.md` (PowerNorm section), quirks included: after warm-up the forward
divides by sqrt(φ+eps) while the backward still divides by the batch's sqrt(q+eps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from unfold.nn._base import OfflineNorm
from unfold.nn._stats import (
    accumulation_dtype,
    check_pad_mask,
    global_mean,
    num_positions,
    position_dims,
    sum_of_squares,
)

# The released GroupScaling1D adds this constant, independent of the layer's eps.
GROUP_SCALING_EPS = 1e-5


def group_scaling(x: Tensor, group_num: int, dim: int = -1) -> Tensor:
    """x / sqrt(mean of x² over each contiguous group of C/group_num channels + 1e-5), the
    channels along axis `dim` (the last by default)."""
    dim = dim % x.dim()
    grouped = x.unflatten(dim, (group_num, x.shape[dim] // group_num))
    moment2 = grouped.square().mean(dim + 1, keepdim=True)
    return (grouped * torch.rsqrt(moment2 + GROUP_SCALING_EPS)).flatten(dim, dim + 1)


class _PowerNormFunction(torch.autograd.Function):
    """y = γ·z + β with z = x̃·inv_std; backward is PN's approximate gradient (spec, PowerNorm)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        inv_std: Tensor,
        batch_inv_std: Tensor,
        norm: PowerNorm,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, inv_std, batch_inv_std)
        ctx.norm = norm  # type: ignore[attr-defined]
        return torch.addcmul(bias.to(x.dtype), x, (weight * inv_std).to(x.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, inv_std, batch_inv_std = ctx.saved_tensors
        norm: PowerNorm = ctx.norm
        acc = accumulation_dtype(dy.dtype)
        dims = position_dims(x)
        nu = norm.ema_gz
        shrink = (1 - norm.alpha_bkw) * nu  # ĝ = g - (1-α_bkw)·ν·z, ν before its update

        dy_x = (dy * x).sum(dims, dtype=acc).to(inv_std.dtype)  # Σ dy·x̃
        x_sq = torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc).square().to(inv_std.dtype)
        # Σ ĝ·z = γ·inv_std·Σ(dy·x̃) - (1-α_bkw)·ν·inv_std²·Σ x̃²
        g_hat_z = weight * inv_std * dy_x - shrink * inv_std.square() * x_sq
        positions = torch.full((), num_positions(x), dtype=inv_std.dtype, device=x.device)
        nu.add_(global_mean(g_hat_z, positions, norm.sync_stats))  # ν <- ν + mean(ĝ·z)
        # dx̃ = ĝ / sqrt(q+eps) = dy·γ·b - x̃·(1-α_bkw)·ν·inv_std·b, b = 1/sqrt(q+eps)
        # dx in x's memory layout (a channels-first layer's x is a permuted view), whatever
        # dy's strides (expanded, from a .sum()): autograd then hands it back without a copy.
        dx = torch.empty_like(x, dtype=dy.dtype)
        torch.mul(dy, (weight * batch_inv_std).to(dy.dtype), out=dx)
        dx.addcmul_(x, (-shrink * inv_std * batch_inv_std).to(dy.dtype))
        dweight = (inv_std * dy_x).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = dy.sum(dims, dtype=acc).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None


class PowerNorm(OfflineNorm):
    """PowerNorm over the channel axis of inputs shaped (..., C), or (N, C, *spatial) with
    `channel_axis=1`.

    Args:
        num_channels: C.
        alpha_fwd, alpha_bkw: weights of the old value in the forward running quadratic mean φ
            and in the backward gradient statistic ν.
        warmup_iters: steps during which the batch statistics normalize the forward.
        group_scaling: the released per-token group scaling (online, never foldable). False
            gives PN*, whose eval is a constant affine.
        group_num: contiguous channel groups for group scaling; must divide C.
        eps: added to the quadratic means.
        sync_stats: sum the batch statistics over torch.distributed ranks (beyond the reference).
        channel_axis: -1 (default), inputs (..., C); or 1, inputs (N, C, *spatial). A
            channels-first layer is exactly the channels-last one applied to `x.movedim(1, -1)`
            and moved back; group scaling then groups along axis 1, and PN*'s eval is x·a + b
            with a, b shaped (C, 1, ..., 1): no transpose.

    forward(x, pad_mask=None): `pad_mask` (bool, True = padding; shape x.shape[:-1], or
    x.shape[:1] + x.shape[2:] channels first) removes padded positions from the statistics.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        warmup_iters: int = 10000,
        group_scaling: bool = True,
        group_num: int = 1,
        eps: float = 1e-5,
        sync_stats: bool = False,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if group_num < 1 or num_channels % group_num:
            raise ValueError(
                f"group_num must be a positive divisor of num_channels={num_channels}, "
                f"got {group_num}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(num_channels, factory, channel_axis)
        self.alpha_fwd = float(alpha_fwd)
        self.alpha_bkw = float(alpha_bkw)
        self.warmup_iters = int(warmup_iters)
        self.group_scaling = bool(group_scaling)
        self.group_num = int(group_num)
        self.eps = float(eps)
        self.sync_stats = bool(sync_stats)

        self.running_phi: Tensor  # φ
        self.ema_gz: Tensor  # ν
        self.register_buffer("running_phi", torch.empty(num_channels, **factory))
        self.register_buffer("ema_gz", torch.empty(num_channels, **factory))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """φ = 1 (as the released code initialises it), ν = 0, t = 0."""
        self.running_phi.fill_(1.0)
        self.ema_gz.zero_()
        self.num_steps.zero_()

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """(a, b) of the eval-mode affine applied after group scaling: a = γ/sqrt(φ+eps), b = β."""
        return self.weight * torch.rsqrt(self.running_phi + self.eps), self.bias

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        self._check_channels(x)
        if not self.training:
            if self.group_scaling:
                x = group_scaling(x, self.group_num, dim=self.channel_axis)
            scale, shift = self.eval_affine()
            return x * self._per_channel(scale, x) + self._per_channel(shift, x)
        x = self._to_channels_last(x)  # a view: channels first runs the channels-last maths
        check_pad_mask(x, pad_mask)
        if self.group_scaling:
            x = group_scaling(x, self.group_num)
        inv_std, batch_inv_std = self._forward_statistics(x, pad_mask)
        out: Tensor = _PowerNormFunction.apply(
            x, self.weight, self.bias, inv_std, batch_inv_std, self
        )
        return self._from_channels_last(out)

    @torch.no_grad()
    def _forward_statistics(self, x: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Advances t and φ; returns the forward's and the batch's 1/sqrt(·+eps)."""
        phi = self.running_phi
        step = self.num_steps.add_(1).clone()
        q = global_mean(*sum_of_squares(x, pad_mask), self.sync_stats).to(phi.dtype)
        var = torch.where(step <= self.warmup_iters, q, phi)  # φ before its update
        inv_std = torch.rsqrt(var + self.eps)
        t = step.to(phi.dtype)
        in_warmup = step < self.warmup_iters
        phi.copy_(torch.where(in_warmup, phi * (t - 1) / t + q / t, phi))
        phi.mul_(self.alpha_fwd).add_(q, alpha=1 - self.alpha_fwd)
        return inv_std, torch.rsqrt(q + self.eps)

    def extra_repr(self) -> str:
        text = (
            f"{self.num_channels}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"warmup_iters={self.warmup_iters}, group_scaling={self.group_scaling}, "
            f"group_num={self.group_num}, eps={self.eps}"
        )
        if self.sync_stats:
            text += ", sync_stats=True"
        return text + self._extra_repr_axis()
