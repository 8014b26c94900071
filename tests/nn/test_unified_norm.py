"""UnifiedNorm against UN_SPEC.md: step for step against a float64 reference, gradients on skip
steps against finite differences, eval, state dict, repr, and no host synchronisation."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from unfold.nn import UnifiedNorm

from .reference_norms import ReferenceUnifiedNorm, assert_step_matches, schedule_scale

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}

# Each case crosses a different set of branches; `expect` lists the reference's branch
# counters that must be non-zero after the run (proof the branch was exercised).
CASES = {
    "window2_filtration_padmask": dict(
        options=dict(window_size=2, warmup_iters=6, outlier_filtration=True),
        steps=1030, pad=True,
        expect=["outlier", "forward: window geometric mean", "backward: window mean",
                "forward: batch statistics", "r free"],
    ),
    "window_pair_2_3_no_filtration": dict(
        options=dict(window_size=(2, 3), warmup_iters=5, outlier_filtration=False),
        steps=1030, pad=True,
        expect=["r clamped at 5", "r clamped at 1/5", "r free",
                "forward: window geometric mean", "backward: window mean"],
    ),
    "window1_always_skips": dict(
        options=dict(window_size=(1, 3), warmup_iters=4, outlier_filtration=True),
        steps=1010, pad=False,
        expect=["forward: batch statistics", "backward: batch statistics"],
    ),
    "warmup_beyond_1000": dict(
        options=dict(window_size=4, warmup_iters=1008, outlier_filtration=True, momentum=0.7,
                     eps=1e-3),
        steps=1025, pad=True,
        expect=["outlier", "forward: window geometric mean", "r free"],
    ),
}


def _pad_mask(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    mask = torch.rand(shape, generator=gen, dtype=F64) < 0.3
    mask.view(-1)[0] = False  # never all padding
    return mask


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference_step_for_step(case: str) -> None:
    spec = CASES[case]
    gen = torch.Generator().manual_seed(0)
    channels, shape = 6, (3, 5, 6)
    norm = UnifiedNorm(channels, dtype=F64, **spec["options"])
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(channels, generator=gen, dtype=F64))
        norm.bias.copy_(0.1 * torch.randn(channels, generator=gen, dtype=F64))
    ref = ReferenceUnifiedNorm(norm.weight, norm.bias, **spec["options"],
                               **{k: v for k, v in (("eps", 1e-5), ("momentum", 0.9))
                                  if k not in spec["options"]})
    channel_scale = torch.exp(0.5 * torch.randn(channels, generator=gen, dtype=F64))

    for t in range(1, spec["steps"] + 1):
        x = torch.randn(shape, generator=gen, dtype=F64) * channel_scale * schedule_scale(t)
        dy = torch.randn(shape, generator=gen, dtype=F64)
        mask = _pad_mask(gen, shape[:-1]) if spec["pad"] and t % 3 else None

        x_ours = x.clone().requires_grad_(True)
        norm.zero_grad()
        y = norm(x_ours, pad_mask=mask)
        y.backward(dy)
        y_ref, saved = ref.forward(x, mask)
        dx_ref, dgamma_ref, dbeta_ref = ref.backward(saved, dy)

        assert_step_matches(norm, (y, x_ours.grad), (y_ref, dx_ref, dgamma_ref, dbeta_ref),
                            ref.state(), where=f"{case}, step {t}", **TOL)

    missing = [b for b in spec["expect"] if ref.branches[b] == 0]
    assert not missing, f"{case} never crossed {missing}; branches seen: {dict(ref.branches)}"


def _norm_at_step(options: dict, steps: int, seed: int = 1) -> UnifiedNorm:
    """A float64 UnifiedNorm trained for `steps` steps on the reference schedule."""
    gen = torch.Generator().manual_seed(seed)
    norm = UnifiedNorm(4, dtype=F64, **options)
    for t in range(1, steps + 1):
        x = (torch.randn(2, 3, 4, generator=gen, dtype=F64) * schedule_scale(t)).requires_grad_()
        norm(x).backward(torch.randn(2, 3, 4, generator=gen, dtype=F64))
    return norm


def _gradcheck_one_step(prepared: UnifiedNorm, x: torch.Tensor) -> None:
    """Finite differences of one training forward from the prepared state, vs our backward."""
    weight = prepared.weight.detach().clone().requires_grad_(True)
    bias = prepared.bias.detach().clone().requires_grad_(True)

    def one_step(x, weight, bias):
        norm = copy.deepcopy(prepared)  # every evaluation starts from the same state
        return functional_call(norm, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(one_step, (x, weight, bias), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradient_on_window1_skip_step_is_exact() -> None:
    prepared = _norm_at_step(dict(window_size=(1, 2), warmup_iters=3), steps=1005)
    x = torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    _gradcheck_one_step(prepared, x.requires_grad_(True))


def test_gradient_on_outlier_skip_step_is_exact() -> None:
    options = dict(window_size=3, warmup_iters=4, outlier_filtration=True)
    prepared = _norm_at_step(options, steps=1010)
    x = 40.0 * torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    probe = copy.deepcopy(prepared)
    before = int(probe.num_outliers)
    probe(x)
    assert int(probe.num_outliers) == before + 1, "the spiked step should be an outlier"
    _gradcheck_one_step(prepared, x.requires_grad_(True))


def test_eval_is_the_constant_affine() -> None:
    norm = _norm_at_step(dict(window_size=2, warmup_iters=3), steps=20).eval()
    x = torch.randn(5, 7, 4, dtype=F64)
    expected = norm.weight * x / torch.sqrt(norm.running_var + norm.eps) + norm.bias
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), f"eval forward changed {key}"


def test_state_dict_round_trips_and_training_continues_identically() -> None:
    trained = _norm_at_step(dict(window_size=(3, 2), warmup_iters=4, outlier_filtration=True),
                            steps=12)
    expected_keys = {"weight", "bias", "running_var", "forward_window", "backward_window",
                     "running_grad", "num_steps", "num_outliers"}
    assert set(trained.state_dict()) == expected_keys
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = UnifiedNorm(4, window_size=(3, 2), warmup_iters=4, outlier_filtration=True,
                           dtype=F64)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 4, dtype=F64)
    dy = torch.randn(2, 3, 4, dtype=F64)
    outputs = []
    for norm in (trained, restored):
        xi = x.clone().requires_grad_(True)
        y = norm(xi)
        y.backward(dy)
        outputs.append((y, xi.grad, norm.state_dict()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=0, atol=0)
    for key in expected_keys:
        torch.testing.assert_close(outputs[0][2][key], outputs[1][2][key], rtol=0, atol=0)


def test_extra_repr_shows_the_options() -> None:
    text = repr(UnifiedNorm(384, window_size=(4, 2), warmup_iters=100, outlier_filtration=True,
                            eps=1e-6, momentum=0.8, sync_stats=True))
    for part in ("384", "window_size=(4, 2)", "warmup_iters=100", "outlier_filtration=True",
                 "eps=1e-06", "momentum=0.8", "sync_stats=True"):
        assert part in text, f"{part!r} missing from {text!r}"
    assert "window_size=4," in repr(UnifiedNorm(8))


@pytest.mark.parametrize("window_size", [0, (2, 0), (1, 2, 3), 2.5, "4"])
def test_bad_window_size_is_refused(window_size) -> None:
    with pytest.raises((TypeError, ValueError), match="window"):
        UnifiedNorm(8, window_size=window_size)


def test_wrong_channels_and_bad_mask_are_named() -> None:
    norm = UnifiedNorm(8)
    with pytest.raises(ValueError, match=r"expects inputs shaped \(\.\.\., 8\), got \(2, 3, 5\)"):
        norm(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"pad_mask .* \(2, 3\), got \(3, 2\)"):
        norm(torch.randn(2, 3, 8), pad_mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        norm(torch.randn(2, 3, 8), pad_mask=torch.zeros(2, 3))


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...] | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        self.ops.append((str(func.overloadpacket.__name__), shape))
        return out


@pytest.mark.parametrize("outlier_filtration", [False, True])
def test_training_step_never_synchronises_with_the_host(outlier_filtration: bool) -> None:
    """`.item()`, `bool(tensor)` and `if tensor:` all go through aten._local_scalar_dense."""
    norm = UnifiedNorm(16, window_size=2, warmup_iters=2, outlier_filtration=outlier_filtration)
    norm.num_steps.fill_(1500)  # past warm-up and r's first 1000 steps: every branch is live
    x = torch.randn(4, 10, 16, requires_grad=True)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, -2:] = True
    with _OpRecorder() as recorder:
        for pad_mask in (None, mask):
            norm(x, pad_mask=pad_mask).sum().backward()
    syncs = [op for op, _ in recorder.ops if op == "_local_scalar_dense"]
    assert not syncs, f"host synchronisations: {len(syncs)}"


def test_forward_allocates_only_its_output() -> None:
    norm = UnifiedNorm(16)
    x = torch.randn(4, 10, 16, requires_grad=True)
    with _OpRecorder() as recorder:
        norm(x)
    input_sized = [op for op, shape in recorder.ops if shape == tuple(x.shape)]
    assert input_sized == ["addcmul"], f"input-sized tensors made by the forward: {input_sized}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_keeps_its_dtype_with_float32_statistics(dtype) -> None:
    torch.manual_seed(0)
    x32 = 3 * torch.randn(4, 10, 16)
    dy32 = torch.randn(4, 10, 16)
    results = {}
    for name, x, dy in (("half", x32.to(dtype), dy32.to(dtype)), ("float32", x32, dy32)):
        norm = UnifiedNorm(16, window_size=2, warmup_iters=2)
        x = x.clone().requires_grad_(True)
        y = norm(x)
        y.backward(dy)
        results[name] = (y, x.grad, norm.running_var)
    y, dx, running_var = results["half"]
    assert y.dtype == dtype and dx.dtype == dtype and running_var.dtype == torch.float32
    torch.testing.assert_close(y.float(), results["float32"][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dx.float(), results["float32"][1], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(running_var, results["float32"][2], rtol=1e-2, atol=0)


def test_channels_first_eval_is_the_constant_affine_along_axis_1() -> None:
    trained = _norm_at_step(dict(window_size=2, warmup_iters=3), steps=20)
    norm = UnifiedNorm(4, window_size=2, warmup_iters=3, channel_axis=1, dtype=F64)
    norm.load_state_dict(trained.state_dict())  # channel_axis is no part of the state
    norm.eval()
    x = torch.randn(5, 4, 3, 2, dtype=F64)
    a = (norm.weight / torch.sqrt(norm.running_var + norm.eps))[:, None, None]
    torch.testing.assert_close(norm(x), a * x + norm.bias[:, None, None], rtol=1e-12, atol=1e-12)
    assert repr(norm).endswith("channel_axis=1)")
