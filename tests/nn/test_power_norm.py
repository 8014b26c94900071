"""PowerNorm against UN_SPEC.md (PowerNorm section): step for step against a float64 reference,
eval, state dict and repr."""

from __future__ import annotations

import io

import pytest
import torch

from unfold.nn import PowerNorm, group_scaling

from .reference_norms import ReferencePowerNorm, assert_step_matches, schedule_scale

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}

CASES = {
    "group_scaling_2_groups_padmask": dict(
        options=dict(warmup_iters=6, group_scaling=True, group_num=2, alpha_fwd=0.8,
                     alpha_bkw=0.7),
        pad=True),
    "pn_star_padmask": dict(options=dict(warmup_iters=6, group_scaling=False), pad=True),
    "group_scaling_1_group": dict(options=dict(warmup_iters=3, group_scaling=True), pad=False),
}
EXPECTED_BRANCHES = ["forward: batch statistics", "forward: running phi", "phi: warm-up average"]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference_step_for_step(case: str) -> None:
    spec = CASES[case]
    options = {"alpha_fwd": 0.9, "alpha_bkw": 0.9, "group_num": 1, "eps": 1e-5,
               **spec["options"]}
    gen = torch.Generator().manual_seed(0)
    channels, shape = 6, (3, 5, 6)
    norm = PowerNorm(channels, dtype=F64, **options)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(channels, generator=gen, dtype=F64))
        norm.bias.copy_(0.1 * torch.randn(channels, generator=gen, dtype=F64))
    ref = ReferencePowerNorm(norm.weight, norm.bias, **options)
    channel_scale = torch.exp(0.5 * torch.randn(channels, generator=gen, dtype=F64))

    for t in range(1, 41):
        x = torch.randn(shape, generator=gen, dtype=F64) * channel_scale * schedule_scale(t)
        dy = torch.randn(shape, generator=gen, dtype=F64)
        mask = None
        if spec["pad"] and t % 3:
            mask = torch.rand(shape[:-1], generator=gen) < 0.3
            mask.view(-1)[0] = False

        x_ours = x.clone().requires_grad_(True)
        norm.zero_grad()
        y = norm(x_ours, pad_mask=mask)
        y.backward(dy)
        x_ref = x.clone().requires_grad_(True)
        y_ref, saved = ref.forward(x_ref, mask)
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(saved, dy, x_ref)

        assert_step_matches(norm, (y, x_ours.grad), (y_ref, dx_ref, dgamma_ref, dbeta_ref),
                            ref.state(), where=f"{case}, step {t}", **TOL)

    missing = [b for b in EXPECTED_BRANCHES if ref.branches[b] == 0]
    assert not missing, f"{case} never crossed {missing}; branches seen: {dict(ref.branches)}"


def _trained(group_scaling: bool) -> PowerNorm:
    norm = PowerNorm(4, warmup_iters=3, group_scaling=group_scaling, group_num=2, dtype=F64)
    for _ in range(6):
        x = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
        norm(x).backward(torch.randn(2, 3, 4, dtype=F64))
    return norm.eval()


def test_pn_star_eval_is_the_constant_affine() -> None:
    norm = _trained(group_scaling=False)
    x = torch.randn(5, 4, dtype=F64)
    expected = norm.weight * x / torch.sqrt(norm.running_phi + norm.eps) + norm.bias
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_pn_eval_applies_group_scaling_per_token() -> None:
    norm = _trained(group_scaling=True)
    x = torch.randn(5, 4, dtype=F64)
    halves = [h / torch.sqrt(h.square().mean(-1, keepdim=True) + 1e-5) for h in x.split(2, -1)]
    expected = norm.weight * torch.cat(halves, -1) / torch.sqrt(norm.running_phi + norm.eps)
    torch.testing.assert_close(norm(x), expected + norm.bias, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trips() -> None:
    trained = _trained(group_scaling=True)
    assert set(trained.state_dict()) == {"weight", "bias", "running_phi", "ema_gz", "num_steps"}
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = PowerNorm(4, warmup_iters=3, group_num=2, dtype=F64).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(restored(x), trained(x), rtol=0, atol=0)


def test_extra_repr_and_bad_group_num() -> None:
    text = repr(PowerNorm(8, alpha_fwd=0.8, warmup_iters=7, group_scaling=False, group_num=4))
    for part in ("8", "alpha_fwd=0.8", "warmup_iters=7", "group_scaling=False", "group_num=4"):
        assert part in text, f"{part!r} missing from {text!r}"
    with pytest.raises(ValueError, match="group_num must be a positive divisor of "
                                         "num_channels=6, got 4"):
        PowerNorm(6, group_num=4)


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6, 5), (3, 6)])
def test_group_scaling_along_axis_1_is_group_scaling_of_the_moved_input(shape) -> None:
    x = torch.randn(shape, dtype=F64)
    expected = group_scaling(x.movedim(1, -1).contiguous(), 3).movedim(-1, 1)
    torch.testing.assert_close(group_scaling(x, 3, dim=1), expected, rtol=1e-12, atol=1e-12)


def test_channels_first_pn_eval_scales_groups_along_axis_1() -> None:
    trained = _trained(group_scaling=True)
    norm = PowerNorm(4, warmup_iters=3, group_num=2, channel_axis=1, dtype=F64)
    norm.load_state_dict(trained.state_dict())
    norm.eval()
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    torch.testing.assert_close(norm(x), trained(x.movedim(1, -1)).movedim(-1, 1),
                               rtol=1e-12, atol=1e-12)
