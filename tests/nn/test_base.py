"""channel_axis (unfold/nn/_base.py), for both layers: a channels-first layer (N, C, *spatial)
is exactly the channels-last layer applied to the input moved to channels-last and moved back
(outputs, gradients, every buffer, eval), allocates no input copies, and refuses bad axes,
shapes and masks by name."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unfold.nn import PowerNorm, UnifiedNorm

from .reference_norms import assert_pairs_close, schedule_scale

F64 = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}
C = 6

LAYERS = {
    "un_filtration": lambda axis: UnifiedNorm(C, window_size=2, warmup_iters=6,
                                              outlier_filtration=True, channel_axis=axis,
                                              dtype=F64),
    "un_window_pair": lambda axis: UnifiedNorm(C, window_size=(2, 3), warmup_iters=5,
                                               momentum=0.8, channel_axis=axis, dtype=F64),
    "pn_group_scaling": lambda axis: PowerNorm(C, warmup_iters=6, group_num=2, alpha_fwd=0.8,
                                               alpha_bkw=0.7, channel_axis=axis, dtype=F64),
    "pn_star": lambda axis: PowerNorm(C, warmup_iters=6, group_scaling=False, channel_axis=axis,
                                      dtype=F64),
}
# (N, C, *spatial): images, sequences (N, C, L), volumes, and a plain (N, C) batch.
SHAPES = {"nchw": (3, C, 4, 5), "ncl": (2, C, 7), "ncdhw": (2, C, 2, 3, 2), "nc": (9, C)}


def _pair(kind: str, gen: torch.Generator) -> tuple[torch.nn.Module, torch.nn.Module]:
    first, last = LAYERS[kind](1), LAYERS[kind](-1)
    with torch.no_grad():
        last.weight.copy_(1 + 0.3 * torch.randn(C, generator=gen, dtype=F64))
        last.bias.copy_(0.1 * torch.randn(C, generator=gen, dtype=F64))
    first.load_state_dict(last.state_dict())  # the same state: channel_axis is no buffer
    return first, last


def _run(kind: str, shape: tuple[int, ...], steps: int, channels_last_memory: bool = False,
         pad: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    """`steps` training steps of the channels-first layer and of the channels-last one on
    x.movedim(1, -1) (a contiguous copy: another memory layout, another code path), compared
    at every step; then both in eval."""
    gen = torch.Generator().manual_seed(0)
    first, last = _pair(kind, gen)
    channel_scale = torch.exp(0.5 * torch.randn(C, generator=gen, dtype=F64))
    broadcast = channel_scale.reshape((C,) + (1,) * (len(shape) - 2))
    for t in range(1, steps + 1):
        x = torch.randn(shape, generator=gen, dtype=F64) * broadcast * schedule_scale(t)
        dy = torch.randn(shape, generator=gen, dtype=F64)
        if channels_last_memory:
            x = x.contiguous(memory_format=torch.channels_last)
        mask = None
        if pad and t % 3:
            mask = torch.rand(shape[:1] + shape[2:], generator=gen) < 0.3  # (N, *spatial)
            mask.view(-1)[0] = False

        x_first = x.clone().requires_grad_(True)
        first.zero_grad()
        y_first = first(x_first, pad_mask=mask)
        y_first.backward(dy)
        x_last = x.movedim(1, -1).contiguous().requires_grad_(True)
        last.zero_grad()
        y_last = last(x_last, pad_mask=mask)
        y_last.backward(dy.movedim(1, -1))

        pairs = {"output": (y_first, y_last.movedim(-1, 1)),
                 "input grad": (x_first.grad, x_last.grad.movedim(-1, 1)),
                 "weight grad": (first.weight.grad, last.weight.grad),
                 "bias grad": (first.bias.grad, last.bias.grad)}
        last_buffers = dict(last.named_buffers())
        pairs.update({f"buffer {n}": (b, last_buffers[n]) for n, b in first.named_buffers()})
        assert_pairs_close(pairs, where=f"{kind}, {shape}, step {t}", **TOL)
        assert y_first.shape == x.shape and x_first.grad.shape == x.shape
        if not channels_last_memory:
            assert y_first.is_contiguous() and x_first.grad.is_contiguous(), \
                "a contiguous NCHW input should get a contiguous output and gradient"

    first.eval()
    last.eval()
    x = torch.randn(shape, generator=gen, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(first(x), last(x.movedim(1, -1)).movedim(-1, 1), **TOL)
    for a, b in zip(first.eval_affine(), last.eval_affine(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    return first, last


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_channels_first_is_channels_last_on_the_moved_input(kind: str, shape) -> None:
    _run(kind, shape, steps=40)


@pytest.mark.parametrize("kind", ["un_filtration", "un_window_pair"])
def test_channels_first_unified_norm_past_warmup_and_r_free(kind: str) -> None:
    """Past step 1000 (r free and clamped) and past warm-up (window smoothing, outliers)."""
    first, _ = _run(kind, SHAPES["nchw"], steps=1030)
    assert int(first.num_steps) == 1030
    if first.outlier_filtration:
        assert int(first.num_outliers) > 0, "the schedule's spikes should trip filtration"


@pytest.mark.parametrize("kind", list(LAYERS))
def test_channels_last_memory_format_input(kind: str) -> None:
    """An NCHW tensor stored channels_last (torch.channels_last): its NHWC view is contiguous."""
    _run(kind, SHAPES["nchw"], steps=12, channels_last_memory=True)


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        numel = out.numel() if isinstance(out, torch.Tensor) else None
        self.ops.append((str(func.overloadpacket.__name__), numel))
        return out


VIEWS = {"permute", "view", "alias", "expand", "detach"}


@pytest.mark.parametrize("make", [
    lambda: UnifiedNorm(16, channel_axis=1),
    lambda: PowerNorm(16, group_scaling=False, channel_axis=1)], ids=["un", "pn*"])
def test_channels_first_step_copies_no_input(make) -> None:
    """Forward: only its output; backward: only dx (and the Σ dy·x product it reduces), even
    with the expanded dy of a .sum()."""
    norm = make()
    x = torch.randn(4, 16, 5, 6, requires_grad=True)
    with _OpRecorder() as forward:
        y = norm(x)
    with _OpRecorder() as backward:
        y.sum().backward()
    made = [[op for op, n in rec.ops if n == x.numel() and op not in VIEWS]
            for rec in (forward, backward)]
    assert made[0] == ["addcmul"], f"input-sized tensors made by the forward: {made[0]}"
    assert made[1] == ["mul", "empty_like", "mul", "addcmul_"], \
        f"input-sized tensors made by the backward: {made[1]}"
    assert x.grad is not None and x.grad.is_contiguous()


@pytest.mark.parametrize("axis", [0, 2, -2, 3, True, 1.0, "1", None])
@pytest.mark.parametrize("cls", [UnifiedNorm, PowerNorm])
def test_bad_channel_axis_is_refused(cls, axis) -> None:
    with pytest.raises(ValueError, match=r"channel_axis must be -1 \(channels last, inputs "
                                         r"\(\.\.\., C\)\) or 1 \(channels first, inputs "
                                         r"\(N, C, \*spatial\)\), got "):
        cls(8, channel_axis=axis)


@pytest.mark.parametrize("cls", [UnifiedNorm, PowerNorm])
def test_channels_first_wrong_shapes_and_masks_are_named(cls) -> None:
    norm = cls(8, channel_axis=1)
    for shape in ((2, 3, 8), (8,)):
        with pytest.raises(ValueError, match=r"channel_axis=1\) expects inputs shaped "
                                             r"\(N, 8, \.\.\.\), got "):
            norm(torch.randn(shape))
    x = torch.randn(2, 8, 3, 4)
    with pytest.raises(ValueError, match=r"pad_mask .* \(2, 3, 4\), got \(2, 8, 3\)"):
        norm(x, pad_mask=torch.zeros(2, 8, 3, dtype=torch.bool))
    assert norm(x, pad_mask=torch.zeros(2, 3, 4, dtype=torch.bool)).shape == x.shape
    assert "channel_axis=1" in repr(norm) and "channel_axis" not in repr(cls(8))


def test_channels_first_pad_mask_drops_positions_from_the_statistics() -> None:
    """pad_mask (N, *spatial): a padded pixel's channels are out of q, whatever their values."""
    x = torch.randn(2, 4, 3, 3, dtype=F64)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[1, 2, :] = True
    spiked = x.clone()
    spiked[1, :, 2, :] = 1e6
    norms = [UnifiedNorm(4, channel_axis=1, dtype=F64) for _ in range(2)]
    for norm, inputs in zip(norms, (x, spiked), strict=True):
        norm(inputs, pad_mask=mask)
    torch.testing.assert_close(norms[0].running_var, norms[1].running_var, rtol=0, atol=0)
    kept = x.movedim(1, -1)[~mask]  # (kept pixels, C)
    expected = 0.9 + 0.1 * kept.square().mean(0)  # ρ after one step from 1
    torch.testing.assert_close(norms[0].running_var, expected, rtol=1e-12, atol=1e-12)
