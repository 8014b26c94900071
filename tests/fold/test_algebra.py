"""unfold.fold.algebra against the unfused computation, in float64 (1e-12) and in the weights'
own float32 (explicit tolerances), plus the cases each rule must refuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unfold.fold.algebra import (
    Affine,
    FoldRejected,
    batch_norm_affine,
    concat_constants,
    fold_gemm_reader,
    fold_into_conv_consumer,
    fold_into_producer,
    fold_matmul_reader,
    gather_constant,
    pad_constant,
    reshape_constant,
    slice_constant,
    transpose_constant,
)

RNG = np.random.default_rng(0)
EXACT = {"rtol": 1e-12, "atol": 1e-12}


def _affine(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-channel (scale, shift), scales of both signs away from 0."""
    return (RNG.uniform(0.2, 3.0, channels) * RNG.choice([-1, 1], channels),
            RNG.normal(size=channels))


def _apply(affine: tuple[np.ndarray, np.ndarray], x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The unfused computation: a⊙x + b along `axis`."""
    scale, shift = affine
    shape = [1] * x.ndim
    shape[axis] = scale.shape[0]
    return x * scale.reshape(shape) + shift.reshape(shape)


def test_batch_norm_constants() -> None:
    gamma, beta, mean, var = RNG.normal(size=5), RNG.normal(size=5), RNG.normal(size=5), \
        RNG.uniform(0.1, 2, 5)
    x = RNG.normal(size=(3, 5))
    expected = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(_apply(batch_norm_affine(gamma, beta, mean, var, 1e-5), x),
                               expected, **EXACT)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_matmul_consumer(with_bias: bool) -> None:
    affine, w = _affine(8), RNG.normal(size=(8, 5))
    c = RNG.normal(size=5) if with_bias else None
    x = RNG.normal(size=(2, 3, 8))
    folded = fold_matmul_reader(w, c, row_scale=affine[0], shift=affine[1])
    assert folded.weight is not None and folded.bias is not None
    expected = _apply(affine, x) @ w + (c if with_bias else 0)
    np.testing.assert_allclose(x @ folded.weight + folded.bias, expected, **EXACT)
    assert folded.max_abs_weight_before == pytest.approx(np.abs(w).max())
    assert folded.max_abs_weight_after == pytest.approx(np.abs(folded.weight).max())


@pytest.mark.parametrize("trans_b", [True, False], ids=["transB", "no_transB"])
def test_gemm_consumer(trans_b: bool) -> None:
    affine = _affine(6)
    w = RNG.normal(size=(4, 6) if trans_b else (6, 4))
    c = RNG.normal(size=4)
    x = RNG.normal(size=(3, 6))
    new_b, new_c, _, _ = fold_gemm_reader(w, c, *affine, trans_b=trans_b, alpha=1.0, beta=1.0)

    def gemm(a, b, bias):
        return a @ (b.T if trans_b else b) + bias

    np.testing.assert_allclose(gemm(x, new_b, new_c), gemm(_apply(affine, x), w, c), **EXACT)


def test_float32_weights_stay_float32_within_tolerance() -> None:
    affine, w, c = _affine(64), RNG.normal(size=(64, 32)).astype(np.float32), \
        RNG.normal(size=32).astype(np.float32)
    x = RNG.normal(size=(10, 64)).astype(np.float32)
    folded = fold_matmul_reader(w, c, row_scale=affine[0], shift=affine[1])
    assert folded.weight is not None and folded.bias is not None
    assert folded.weight.dtype == np.float32 and folded.bias.dtype == np.float32
    expected = _apply(affine, x.astype(np.float64)) @ w.astype(np.float64) + c
    actual = x @ folded.weight + folded.bias
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= 1e-5 * scale, "fp32 fold error beyond 1e-5 of scale"


def test_matmul_producer_and_divided_residual_branch() -> None:
    affine, w, c = _affine(5), RNG.normal(size=(7, 5)), RNG.normal(size=5)
    x = RNG.normal(size=(3, 7))
    produced = fold_into_producer(w, c, *affine, output_axis=1)
    np.testing.assert_allclose(x @ produced.weight + produced.bias, _apply(affine, x @ w + c),
                               **EXACT)
    # rule 5: stream p carries a pending affine; the branch joining it is divided by a
    # (rule 2 with the affine 1/a, as the residual rule asks the branch's producer)
    p = RNG.normal(size=(3, 5))
    divided = fold_into_producer(w, c, 1.0 / affine[0], np.zeros(5), 1)
    np.testing.assert_allclose(_apply(affine, p + x @ divided.weight + divided.bias),
                               _apply(affine, p) + (x @ w + c), **EXACT)


def test_fold_making_fp16_weights_non_finite_is_refused() -> None:
    w = np.ones((4, 2), dtype=np.float16)
    with pytest.raises(FoldRejected, match="non-finite in float16"):
        fold_matmul_reader(w, None, row_scale=np.full(4, 1e5), shift=None)
    with pytest.raises(FoldRejected, match="non-finite in float16"):
        fold_into_producer(w, None, np.full(2, 1e5), np.zeros(2), output_axis=1)


def _conv(x, w, b, pads: int, group: int = 1) -> np.ndarray:
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                    None if b is None else torch.from_numpy(b), padding=pads,
                    groups=group).numpy()


def test_conv_producer() -> None:
    affine, w, c = _affine(6), RNG.normal(size=(6, 3, 2, 2)), RNG.normal(size=6)
    x = RNG.normal(size=(2, 3, 8, 8))
    folded = fold_into_producer(w, c, *affine, output_axis=0)
    np.testing.assert_allclose(_conv(x, folded.weight, folded.bias, 0),
                               _apply(affine, _conv(x, w, c, 0), axis=1), **EXACT)


@pytest.mark.parametrize("group", [1, 2], ids=["groups1", "groups2"])
def test_conv_consumer(group: int) -> None:
    affine = _affine(4)
    w, c = RNG.normal(size=(6, 4 // group, 3, 3)), RNG.normal(size=6)
    x = RNG.normal(size=(2, 4, 7, 7))
    folded = fold_into_conv_consumer(w, c, *affine, group=group)
    np.testing.assert_allclose(_conv(x, folded.weight, folded.bias, 0, group),
                               _conv(_apply(affine, x, axis=1), w, c, 0, group), **EXACT)


@pytest.mark.parametrize("group", [1, 2], ids=["groups1", "groups2"])
def test_a_padded_conv_takes_the_scale_and_keeps_the_shift_over_the_scale_before_it(
        group: int) -> None:
    """Rule 7 with padding, as transfer/conv.py does it: the weights take a (zero shift
    passed), an Add of b⊘a stays before the Conv; exact at the borders."""
    scale, shift = _affine(4)
    w, c = RNG.normal(size=(6, 4 // group, 3, 3)), RNG.normal(size=6)
    x = RNG.normal(size=(2, 4, 7, 7))
    folded = fold_into_conv_consumer(w, c, scale, np.zeros(4), group=group)
    before = x + (shift / scale).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(_conv(before, folded.weight, folded.bias, 1, group),
                               _conv(_apply((scale, shift), x, axis=1), w, c, 1, group),
                               **EXACT)


def test_channel_mismatch_is_named() -> None:
    with pytest.raises(FoldRejected, match="the affine has 3 channels, the op 5"):
        fold_into_producer(RNG.normal(size=(2, 5)), None, *_affine(3), output_axis=1)


# --- the dataflow pass's broadcast affines and the layout functions that move them ---------

def _broadcast(value: np.ndarray, shape) -> np.ndarray:
    return np.broadcast_to(value, shape)


def test_affine_composition_and_compression() -> None:
    first = Affine(RNG.uniform(0.5, 2, (1, 1, 4)), RNG.normal(size=(1, 1, 4)))
    second = Affine(np.full((1, 3, 1), 2.0), np.zeros((1, 1, 1)))
    x = RNG.normal(size=(2, 3, 4))
    both = first.then(second)
    np.testing.assert_allclose(both.scale * x + both.shift,
                               second.scale * (first.scale * x + first.shift) + second.shift,
                               **EXACT)
    assert Affine(np.ones((1, 5, 4)), np.zeros((1, 5, 4))).scale.shape == (1, 1, 1), \
        "a constant that does not vary along an axis is kept as size 1 there"
    assert both.ops() == 2 and Affine.identity(3).ops() == 0


@pytest.mark.parametrize(("source", "target"), [
    (["N", 6, 4], ["N", 2, 3, 4]),  # tokens split: the channels stay last
    (["N", 2, 2, 2, 2, 4], ["N", 2, 2, 16]),  # patch merging: 4 channel vectors side by side
    ([None, 6, 4], [None, 24]),  # an unknown batch: the affine is 1 over it
    (["B", 6, 1, 1], ["B", 6]),  # channels first, squeezed
])
def test_reshape_constant_agrees_with_reshaping_the_full_constant(source, target) -> None:
    shape_in = [3 if not isinstance(d, int) else d for d in source]
    shape_out = [d if isinstance(d, int) else -1 for d in target]
    channel_axis = 1 if source[-1] == 1 else len(source) - 1
    value = np.ones([1] * len(source))
    value = np.moveaxis(np.broadcast_to(
        RNG.normal(size=shape_in[channel_axis]).reshape([-1] + [1] * (len(source) - 1)),
        [shape_in[channel_axis]] + [1] * (len(source) - 1)), 0, channel_axis).copy()
    mapped = reshape_constant(value, source, target)
    assert mapped is not None
    np.testing.assert_array_equal(
        np.broadcast_to(mapped, np.reshape(np.empty(shape_in), shape_out).shape),
        np.reshape(_broadcast(value, shape_in), shape_out))


def test_reshape_constant_refuses_what_it_cannot_know() -> None:
    per_channel = RNG.normal(size=(1, 1, 8))
    assert reshape_constant(per_channel, ["N", 3, 8], [None]) is None, "merged with a dynamic dim"
    assert reshape_constant(per_channel, ["N", 3, 8], ["N", 2, 12]) is not None, \
        "a static block: written out whole (a (2, 12) constant, exact)"
    assert reshape_constant(per_channel, [None, 8], [None, 2, None]) is None


def test_layout_functions_match_numpy_on_the_full_constant() -> None:
    value = RNG.normal(size=(1, 5, 4))
    full = _broadcast(value, (2, 5, 4))
    np.testing.assert_array_equal(_broadcast(transpose_constant(value, [0, 2, 1]), (2, 4, 5)),
                                  full.transpose(0, 2, 1))
    np.testing.assert_array_equal(
        _broadcast(slice_constant(value, [1], [4], [1], [1]), (2, 3, 4)), full[:, 1:4])
    np.testing.assert_array_equal(
        _broadcast(gather_constant(value, np.array([3, 0]), 1, 1), (2, 2, 4)),
        np.take(full, [3, 0], axis=1))
    padded = pad_constant(value, [0, 1, 0, 0, 2, 0], [2, 5, 4], 0.0)
    np.testing.assert_array_equal(_broadcast(padded, (2, 8, 4)),
                                  np.pad(full, [(0, 0), (1, 2), (0, 0)]))
    joined = concat_constants([value, np.ones((1, 1, 1))], 1, [5, 2])
    np.testing.assert_array_equal(_broadcast(joined, (2, 7, 4)),
                                  np.concatenate([full, np.ones((2, 2, 4))], axis=1))


def test_matmul_reader_with_a_per_token_shift_and_a_token_linear() -> None:
    """A shift that varies per token becomes a per-token bias; a token linear (its scale
    constant along the contraction) keeps the scale pending and divides the bias by it."""
    w, c = RNG.normal(size=(4, 3)), RNG.normal(size=3)
    x = RNG.normal(size=(2, 5, 4))
    scale, shift = RNG.uniform(0.5, 2, 4), RNG.normal(size=(1, 5, 4))
    folded = fold_matmul_reader(w, c, row_scale=scale, shift=shift)
    np.testing.assert_allclose(x @ folded.weight + folded.bias, (x * scale + shift) @ w + c,
                               **EXACT)
    s = RNG.uniform(0.5, 2, (1, 5, 1))  # per row of a (B, 5, 4) input: constant along K
    token = fold_matmul_reader(w, c, row_scale=None, shift=shift, bias_divisor=s)
    assert token.weight is None
    np.testing.assert_allclose(s * (x @ w + token.bias), (s * x + shift) @ w + c, **EXACT)


def test_gemm_reader_with_alpha_and_beta() -> None:
    w, c = RNG.normal(size=(3, 4)), RNG.normal(size=3)
    scale, shift = RNG.uniform(0.5, 2, 4), RNG.normal(size=4)
    x = RNG.normal(size=(2, 4))
    new_b, new_c, _, _ = fold_gemm_reader(w, c, scale, shift, trans_b=True, alpha=0.5,
                                          beta=2.0)
    np.testing.assert_allclose(0.5 * x @ new_b.T + 2.0 * new_c,
                               0.5 * (x * scale + shift) @ w.T + 2.0 * c, **EXACT)
