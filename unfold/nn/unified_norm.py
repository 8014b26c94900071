"""Unified Normalization (Yang et al., "Unified Normalization for Accelerating and Stabilizing
Transformers", ACM MM 2022, arXiv 2208.01313), as its authors released it.

UN normalizes by a smoothed quadratic mean of each channel (no mean subtraction) and keeps a
running estimate ρ of it, so in eval mode it is the constant per-channel affine

    y = a ⊙ x + b,   a = γ / sqrt(ρ + eps),   b = β

which `unfold` folds into the neighbouring MatMul/Gemm. Training follows `UN_SPEC.md` step for
step (the numbered comments below are the spec's steps), quirks of the released code included.
Two things differ from the released code and change no number:

* no host synchronisation: every branch of the spec (warm-up, window smoothing, outlier skip,
  r clamp) is a `torch.where` on device tensors, never `.item()` or `if tensor:`;
* no copies of the input the maths does not need: the forward allocates only its output
  (z = x / sqrt(σ²+eps) is recomputed in the backward from x and the per-channel 1/sqrt(σ²+eps)).

`sync_stats=True` (beyond the reference, default off) sums the statistics q and g·z over the
torch.distributed ranks, as SyncBatchNorm does.
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

# The released code leaves r at 1 for at least this many steps, whatever the warm-up.
MIN_STEPS_BEFORE_R = 1000
# ... and clamps it to [1/R_CLAMP, R_CLAMP] afterwards.
R_CLAMP = 5.0


def _window_pair(window_size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (window_size, window_size) if isinstance(window_size, int) else window_size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in pair)
    ):
        raise TypeError(
            f"window_size must be an int or a pair (forward, backward) of ints, got {window_size!r}"
        )
    if min(pair) < 1:
        raise ValueError(f"window sizes must be at least 1, got {window_size!r}")
    return pair[0], pair[1]


class _UnifiedNormFunction(torch.autograd.Function):
    """y = γ·z + β with z = x·inv_std; the backward is UN's smoothed gradient (spec, Backward).

    The statistics of the forward (t, skip, σ², r) are computed beforehand by
    `UnifiedNorm._forward_statistics`; the backward updates the backward window and ν in place.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        inv_std: Tensor,
        r: Tensor,
        step: Tensor,
        skip: Tensor,
        norm: UnifiedNorm,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, inv_std, r, step, skip)
        ctx.norm = norm  # type: ignore[attr-defined]
        # Step 10, y = γ·x/sqrt(σ²+eps) + β, as one fused multiply-add.
        return torch.addcmul(bias.to(x.dtype), x, (weight * inv_std).to(x.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, inv_std, r, step, skip = ctx.saved_tensors
        norm: UnifiedNorm = ctx.norm
        acc = accumulation_dtype(dy.dtype)
        dims = position_dims(x)
        m = norm.momentum
        window = norm.backward_window
        nu = norm.running_grad

        # Σ dy·x per channel: gives both Σ g·z (below) and dγ.
        dy_x = (dy * x).sum(dims, dtype=acc).to(inv_std.dtype)
        g_scale = weight * r  # 1. g = dy·γ·r
        # 2. gz = mean over ALL positions of g·z = γ·r·inv_std·Σ(dy·x) / N
        positions = torch.full((), num_positions(x), dtype=inv_std.dtype, device=x.device)
        gz = global_mean(g_scale * inv_std * dy_x, positions, norm.sync_stats)
        # 3. Wg[t mod Mb] <- ν if skip else gz
        slot = (step % norm.backward_window_size).reshape(1)
        window.index_copy_(0, slot, torch.where(skip, nu, gz).unsqueeze(0))
        # 4. μ = gz early, in warm-up or on a skip step; else the window's mean
        use_batch = (step <= norm.backward_window_size) | (step < norm.warmup_iters) | skip
        mu = torch.where(use_batch, gz, window.mean(0))
        # 5. ν <- m·ν + (1-m)·μ
        nu.mul_(m).add_(mu, alpha=1 - m)
        # 6. ĝ = g - c·z with c = μ on a skip step, ν (after step 5) otherwise
        c = torch.where(skip, mu, nu)
        # 7. dx = ĝ·inv_std = dy·(γ·r·inv_std) - x·(c·inv_std²)
        # dx in x's memory layout (a channels-first layer's x is a permuted view), whatever
        # dy's strides (expanded, from a .sum()): autograd then hands it back without a copy.
        dx = torch.empty_like(x, dtype=dy.dtype)
        torch.mul(dy, (g_scale * inv_std).to(dy.dtype), out=dx)
        dx.addcmul_(x, (-c * inv_std.square()).to(dy.dtype))
        dweight = (r * inv_std * dy_x).to(weight.dtype) if ctx.needs_input_grad[1] else None
        dbias = dy.sum(dims, dtype=acc).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None, None, None


# the authors' UN1d buffers (hikvision-research/Unified-Normalization) -> this layer's
AUTHORS_BUFFERS = {"buffer_x2": "forward_window", "buffer_gz": "backward_window",
                   "ema_gz": "running_grad", "iters": "num_steps",
                   "skip_counter": "num_outliers"}


class UnifiedNorm(OfflineNorm):
    """Unified Normalization over the channel axis of inputs shaped (..., C), or (N, C, *spatial)
    with `channel_axis=1`.

    Args:
        num_channels: C.
        window_size: Mf = Mb, or a pair (Mf, Mb): how many past batch statistics the forward
            (and backward) window smooths over.
        warmup_iters: steps during which the plain batch statistics are used.
        outlier_filtration: skip the smoothing on steps whose statistics look like outliers
            (the authors turn it on for vision, off for translation).
        eps: added to the variance.
        momentum: weight of the OLD value in the running averages (0.9 keeps 90% of it), the
            opposite of `torch.nn.BatchNorm`'s convention.
        sync_stats: sum the batch statistics over torch.distributed ranks (beyond the reference).
        channel_axis: -1 (default), inputs (..., C); or 1, inputs (N, C, *spatial), as
            Conv2d writes them (timm's LayerNorm2d, Hugging Face's channels_first LayerNorms).
            A channels-first layer is exactly the channels-last one applied to
            `x.movedim(1, -1)` and moved back (statistics, state and eval affine included); its
            eval mode is x·a + b with a, b shaped (C, 1, ..., 1): no transpose.

    forward(x, pad_mask=None): `pad_mask` (bool, True = padding) removes padded positions from
    the statistics; every position is normalized. Its shape is the input's without the channel
    axis: x.shape[:-1], or (N, *spatial) = x.shape[:1] + x.shape[2:] channels first.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        window_size: int | tuple[int, int] = 4,
        warmup_iters: int = 4000,
        outlier_filtration: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.9,
        sync_stats: bool = False,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(num_channels, factory, channel_axis)
        self.forward_window_size, self.backward_window_size = _window_pair(window_size)
        self.warmup_iters = int(warmup_iters)
        self.outlier_filtration = bool(outlier_filtration)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.sync_stats = bool(sync_stats)

        self.running_var: Tensor  # ρ
        self.forward_window: Tensor  # Wx, (Mf, C)
        self.backward_window: Tensor  # Wg, (Mb, C)
        self.running_grad: Tensor  # ν
        self.num_outliers: Tensor
        self.register_buffer("running_var", torch.empty(num_channels, **factory))
        self.register_buffer(
            "forward_window", torch.empty(self.forward_window_size, num_channels, **factory)
        )
        self.register_buffer(
            "backward_window", torch.empty(self.backward_window_size, num_channels, **factory)
        )
        self.register_buffer("running_grad", torch.empty(num_channels, **factory))
        self.register_buffer("num_outliers", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """ρ = 1, windows and ν = 0, step and outlier counters = 0."""
        self.running_var.fill_(1.0)
        self.forward_window.zero_()
        self.backward_window.zero_()
        self.running_grad.zero_()
        self.num_steps.zero_()
        self.num_outliers.zero_()

    def eval_affine(self) -> tuple[Tensor, Tensor]:
        """(a, b) of the eval-mode affine y = a⊙x + b: a = γ/sqrt(ρ+eps), b = β, shape (C,)."""
        return self.weight * torch.rsqrt(self.running_var + self.eps), self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """A state dict saved from the authors' UN1d loads as it is: their buffers under
        this layer's names (AUTHORS_BUFFERS), their (1,) counters as scalars. The maths is
        theirs step for step, so training goes on where theirs stopped."""
        if prefix + "buffer_x2" in state_dict and prefix + "forward_window" not in state_dict:
            for theirs, ours in AUTHORS_BUFFERS.items():
                if prefix + theirs in state_dict:
                    value = state_dict.pop(prefix + theirs)
                    state_dict[prefix + ours] = value.reshape(()) \
                        if ours in ("num_steps", "num_outliers") else value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        self._check_channels(x)
        if not self.training:
            scale, shift = self.eval_affine()
            return x * self._per_channel(scale, x) + self._per_channel(shift, x)
        x = self._to_channels_last(x)  # a view: channels first runs the channels-last maths
        check_pad_mask(x, pad_mask)
        inv_std, r, step, skip = self._forward_statistics(x, pad_mask)
        out: Tensor = _UnifiedNormFunction.apply(
            x, self.weight, self.bias, inv_std, r, step, skip, self
        )
        return self._from_channels_last(out)

    @torch.no_grad()
    def _forward_statistics(
        self, x: Tensor, pad_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Spec steps 1-7 and 9; returns 1/sqrt(σ²+eps), r, t and skip for the Function."""
        mf = self.forward_window_size
        window = self.forward_window
        rho = self.running_var
        step = self.num_steps.add_(1).clone()  # 1. t <- t + 1
        # 2. q = mean of x² over the non-padding positions
        q = global_mean(*sum_of_squares(x, pad_mask), self.sync_stats).to(rho.dtype)
        if self.outlier_filtration:
            # 3. V = unbiased variance of all Mf·C entries of sqrt(Wx), before q is written
            spread = window.sqrt().var()
        slot = (step % mf).reshape(1)
        window.index_copy_(0, slot, q.unsqueeze(0))  # 4. Wx[t mod Mf] <- q
        geometric_mean = window.log().mean(0).exp()
        skip = torch.full((), mf == 1, dtype=torch.bool, device=x.device)  # 5.
        if self.outlier_filtration:
            arithmetic_mean = window.mean(0)
            outlier = (step >= self.warmup_iters) & (
                (arithmetic_mean - geometric_mean) > spread * mf
            ).any()
            window.index_copy_(0, slot, torch.where(outlier, rho, q).unsqueeze(0))
            self.num_outliers.add_(outlier.long())
            skip = skip | outlier
        # 6. σ² = q early, in warm-up or on a skip step; else the window's geometric mean
        use_batch = (step <= mf) | (step < self.warmup_iters) | skip
        var = torch.where(use_batch, q, geometric_mean)
        # 7. r = sqrt(σ²+eps)/sqrt(ρ+eps), ρ before its update; 1 early or on skip, else clamped
        r = torch.sqrt(var + self.eps) / torch.sqrt(rho + self.eps)
        r_is_one = (step <= max(MIN_STEPS_BEFORE_R, self.warmup_iters)) | skip
        r = torch.where(r_is_one, torch.ones_like(r), r.clamp(1 / R_CLAMP, R_CLAMP))
        rho.mul_(self.momentum).add_(var, alpha=1 - self.momentum)  # 9.
        return torch.rsqrt(var + self.eps), r, step, skip  # 8. uses 1/sqrt(σ²+eps)

    def extra_repr(self) -> str:
        window: int | tuple[int, int] = self.forward_window_size
        if self.forward_window_size != self.backward_window_size:
            window = (self.forward_window_size, self.backward_window_size)
        text = (
            f"{self.num_channels}, window_size={window}, warmup_iters={self.warmup_iters}, "
            f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )
        if self.sync_stats:
            text += ", sync_stats=True"
        return text + self._extra_repr_axis()
