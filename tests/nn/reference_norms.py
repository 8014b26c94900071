"""Plain, slow, obviously-right float64 re-implementations of UN_SPEC.md, for the tests only.

Each step of the spec is one line here, in order, with Python branches on Python values. Nothing
is shared with `unfold.nn`: no fused maths, no torch.where, no custom autograd Function. Each
object also counts which branch every step took, so a test can prove it crossed them all.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor


def _rows(t: Tensor) -> Tensor:
    """(..., C) -> (positions, C)."""
    return t.reshape(-1, t.shape[-1])


@dataclass
class _UNStep:
    t: int
    skip: bool
    sigma2: Tensor
    z: Tensor
    r: Tensor


class ReferenceUnifiedNorm:
    def __init__(self, weight, bias, *, window_size, warmup_iters, outlier_filtration, eps,
                 momentum):
        mf, mb = (window_size, window_size) if isinstance(window_size, int) else window_size
        c = weight.numel()
        self.mf, self.mb = mf, mb
        self.warmup, self.filtration, self.eps, self.m = (
            warmup_iters, outlier_filtration, eps, momentum)
        self.gamma = weight.detach().double().clone()
        self.beta = bias.detach().double().clone()
        self.rho = torch.ones(c, dtype=torch.float64)
        self.Wx = torch.zeros(mf, c, dtype=torch.float64)
        self.Wg = torch.zeros(mb, c, dtype=torch.float64)
        self.nu = torch.zeros(c, dtype=torch.float64)
        self.t = 0
        self.outliers = 0
        self.branches: Counter[str] = Counter()

    def forward(self, x: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, _UNStep]:
        self.t += 1
        t = self.t
        rows = _rows(x)
        if pad_mask is not None:
            rows = rows[~pad_mask.reshape(-1)]
        q = (rows * rows).mean(dim=0)
        V = torch.sqrt(self.Wx).flatten().var(unbiased=True)
        self.Wx[t % self.mf] = q
        skip = self.mf == 1
        if self.filtration and t >= self.warmup:
            AM = self.Wx.mean(dim=0)
            GM = torch.exp(torch.log(self.Wx).mean(dim=0))
            if bool(((AM - GM) > V * self.mf).any()):
                self.Wx[t % self.mf] = self.rho.clone()
                skip = True
                self.outliers += 1
                self.branches["outlier"] += 1
        if t <= self.mf or t < self.warmup or skip:
            sigma2 = q
            self.branches["forward: batch statistics"] += 1
        else:
            sigma2 = torch.exp(torch.log(self.Wx).mean(dim=0))
            self.branches["forward: window geometric mean"] += 1
        r = torch.sqrt(sigma2 + self.eps) / torch.sqrt(self.rho + self.eps)
        if t <= max(1000, self.warmup) or skip:
            r = torch.ones_like(r)
        else:
            if bool((r > 5).any()):
                self.branches["r clamped at 5"] += 1
            if bool((r < 1 / 5).any()):
                self.branches["r clamped at 1/5"] += 1
            if bool(((r != 1) & (r <= 5) & (r >= 1 / 5)).any()):
                self.branches["r free"] += 1
            r = r.clamp(1 / 5, 5)
        z = x / torch.sqrt(sigma2 + self.eps)
        self.rho = self.m * self.rho + (1 - self.m) * sigma2
        y = self.gamma * z + self.beta
        return y, _UNStep(t, skip, sigma2, z, r)

    def backward(self, step: _UNStep, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t, skip, z, r = step.t, step.skip, step.z, step.r
        g = dy * self.gamma * r
        gz = _rows(g * z).mean(dim=0)
        self.Wg[t % self.mb] = self.nu.clone() if skip else gz
        if t <= self.mb or t < self.warmup or skip:
            mu = gz
            self.branches["backward: batch statistics"] += 1
        else:
            mu = self.Wg.mean(dim=0)
            self.branches["backward: window mean"] += 1
        self.nu = self.m * self.nu + (1 - self.m) * mu
        g_hat = g - mu * z if skip else g - self.nu * z
        dx = g_hat / torch.sqrt(step.sigma2 + self.eps)
        dgamma = _rows(dy * r * z).sum(dim=0)
        dbeta = _rows(dy).sum(dim=0)
        return dx, dgamma, dbeta

    def state(self) -> dict[str, Tensor]:
        """The buffers, under the names UnifiedNorm gives them."""
        return {
            "running_var": self.rho,
            "forward_window": self.Wx,
            "backward_window": self.Wg,
            "running_grad": self.nu,
            "num_steps": torch.tensor(self.t),
            "num_outliers": torch.tensor(self.outliers),
        }


def reference_group_scaling(x: Tensor, group_num: int) -> Tensor:
    c = x.shape[-1]
    size = c // group_num
    parts = []
    for k in range(group_num):
        part = x[..., k * size:(k + 1) * size]
        parts.append(part / torch.sqrt((part * part).mean(dim=-1, keepdim=True) + 1e-5))
    return torch.cat(parts, dim=-1)


class ReferencePowerNorm:
    def __init__(self, weight, bias, *, alpha_fwd, alpha_bkw, warmup_iters, group_scaling,
                 group_num, eps):
        c = weight.numel()
        self.afwd, self.abkw, self.warmup = alpha_fwd, alpha_bkw, warmup_iters
        self.gs, self.group_num, self.eps = group_scaling, group_num, eps
        self.gamma = weight.detach().double().clone()
        self.beta = bias.detach().double().clone()
        self.phi = torch.ones(c, dtype=torch.float64)
        self.nu = torch.zeros(c, dtype=torch.float64)
        self.t = 0
        self.branches: Counter[str] = Counter()

    def forward(self, x: Tensor, pad_mask: Tensor | None):
        """Returns y and what the backward needs; x̃ keeps its autograd link to x."""
        self.t += 1
        t = self.t
        xt = reference_group_scaling(x, self.group_num) if self.gs else x
        rows = _rows(xt.detach())
        if pad_mask is not None:
            rows = rows[~pad_mask.reshape(-1)]
        q = (rows * rows).mean(dim=0)
        if t <= self.warmup:
            z = xt.detach() / torch.sqrt(q + self.eps)
            self.branches["forward: batch statistics"] += 1
        else:
            z = xt.detach() / torch.sqrt(self.phi + self.eps)
            self.branches["forward: running phi"] += 1
        if t < self.warmup:
            self.phi = self.phi * (t - 1) / t + q / t
            self.branches["phi: warm-up average"] += 1
        self.phi = self.afwd * self.phi + (1 - self.afwd) * q
        y = self.gamma * z + self.beta
        return y, (xt, z, q)

    def backward(self, saved, dy: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xt, z, q = saved
        g = self.gamma * dy
        g_hat = g - (1 - self.abkw) * self.nu * z
        self.nu = self.nu + _rows(g_hat * z).mean(dim=0)
        dxt = g_hat / torch.sqrt(q + self.eps)
        if self.gs:
            (dx,) = torch.autograd.grad(xt, x, dxt)
        else:
            dx = dxt
        return dx, _rows(dy * z).sum(dim=0), _rows(dy).sum(dim=0)

    def state(self) -> dict[str, Tensor]:
        return {"running_phi": self.phi, "ema_gz": self.nu, "num_steps": torch.tensor(self.t)}


def assert_pairs_close(pairs: dict[str, tuple[Tensor, Tensor]], where: str,
                       rtol: float = 1e-10, atol: float = 1e-10) -> None:
    """Cheap check of every (actual, expected) pair; torch.testing's full message for a pair
    that differs. Called every step of long runs, where assert_close alone dominates."""
    for what, (actual, expected) in pairs.items():
        expected = expected.to(actual.dtype)
        if not bool(((actual - expected).abs() <= atol + rtol * expected.abs()).all()):
            torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                                       msg=lambda m, w=what: f"{w}, {where}: {m}")


def assert_step_matches(norm, ours: tuple[Tensor, Tensor], reference: tuple[Tensor, ...],
                        reference_state: dict[str, Tensor], where: str, **tol: float) -> None:
    """One training step of `norm` against the reference: output, input/weight/bias gradients
    and every buffer. ours = (y, x.grad); reference = (y, dx, dγ, dβ)."""
    y, dx = ours
    y_ref, dx_ref, dgamma_ref, dbeta_ref = reference
    buffers = dict(norm.named_buffers())
    pairs = {"output": (y, y_ref), "input grad": (dx, dx_ref),
             "weight grad": (norm.weight.grad, dgamma_ref),
             "bias grad": (norm.bias.grad, dbeta_ref)}
    pairs.update({f"buffer {n}": (buffers[n], v) for n, v in reference_state.items()})
    assert_pairs_close(pairs, where=where, **tol)


def schedule_scale(t: int) -> float:
    """Input scale at step t: smooth drift, with spikes and dips that trip outlier filtration
    and (after step 1000, filtration off) clamp r at both ends."""
    scale = math.exp(0.3 * math.sin(t / 7.0))
    if t % 29 == 0:
        scale *= 30.0
    if t % 53 == 0:
        scale /= 30.0
    return scale
