"""The folding algebra of DESIGN.md, on numpy arrays only: nothing here knows ONNX.

An offline norm in eval mode is a per-channel affine A(x) = a⊙x + b on the channel axis. Each
function below takes constants, computes in float64, checks the result is finite, and returns
new constants in the weights' dtype; the graph rewriter decides where they go. Shapes follow
ONNX: MatMul weights are (C_in, C_out), Gemm's B is (C_out, C_in) when transB=1, Conv weights
are (C_out, C_in/group, *kernel).

Rules (numbers as in DESIGN.md):

1. into a consumer MatMul:   (a⊙x + b) W + c = x (diag(a) W) + (b W + c)
   into a consumer Gemm, transB=1:   W' = W diag(a) (scale B's columns), c' = W b + c
2. into a producer (MatMul/Gemm/Conv whose only consumer is the norm): scale the output
   channels, W' = W·a (per output channel), c' = a⊙c + b
4. composition:   A2(A1(x)) = (a2⊙a1)⊙x + (a2⊙b1 + b2)
5. pending affine through a residual Add:   a⊙p + b + w = a⊙(p + w⊘a) + b, so the linear that
   produces w gets its output channels (and bias) divided by a
7. into a consumer Conv: a always (W' = W·a per input channel); b only when every pad is zero
   (c' = c + Σ W b); with padding the shift stays as an Add of b⊘a before the Conv, which is
   exact because zero padding commutes with the per-channel scale:
   conv(pad(a⊙x + b)) = conv_{W·a}(pad(x + b⊘a))
9. a fold that would make a weight non-finite is refused (`FoldRejected`), and every result
   reports the largest |weight| before and after, for judging an fp16 build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FoldRejected(ValueError):
    """A fold that cannot be done exactly or safely; `reason` says why (goes in the report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ChannelAffine:
    """y = scale⊙x + shift over one channel axis; both (C,), held in float64."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        shift = np.asarray(self.shift, dtype=np.float64).reshape(-1)
        if scale.shape != shift.shape:
            raise ValueError(f"scale {scale.shape} and shift {shift.shape} differ in length")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "shift", shift)

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])

    @classmethod
    def identity(cls, channels: int) -> ChannelAffine:
        return cls(np.ones(channels), np.zeros(channels))

    @classmethod
    def from_unified_norm(cls, weight, bias, running_var, eps: float) -> ChannelAffine:
        """UN / PN* eval: a = γ / sqrt(ρ + eps), b = β."""
        var = np.asarray(running_var, dtype=np.float64)
        return cls(np.asarray(weight, dtype=np.float64) / np.sqrt(var + eps), bias)

    @classmethod
    def from_batch_norm(cls, weight, bias, mean, var, eps: float) -> ChannelAffine:
        """BatchNormalization: a = γ / sqrt(var + eps), b = β - mean·a."""
        scale = np.asarray(weight, dtype=np.float64) / np.sqrt(
            np.asarray(var, dtype=np.float64) + eps)
        return cls(scale, np.asarray(bias, dtype=np.float64) - np.asarray(mean) * scale)

    def then(self, second: ChannelAffine) -> ChannelAffine:
        """Rule 4: second(self(x)) = (a2⊙a1)⊙x + (a2⊙b1 + b2)."""
        _same_channels(self.channels, second.channels, "compose")
        return ChannelAffine(second.scale * self.scale, second.scale * self.shift + second.shift)

    def apply(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        shape = [1] * x.ndim
        shape[axis] = self.channels
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)

    def is_identity(self) -> bool:
        return bool(np.all(self.scale == 1.0) and np.all(self.shift == 0.0))


@dataclass(frozen=True)
class FoldedLinear:
    """New constants for a linear op, and the largest |weight| before and after (rule 9)."""

    weight: np.ndarray
    bias: np.ndarray
    max_abs_weight_before: float
    max_abs_weight_after: float


@dataclass(frozen=True)
class FoldedConvConsumer(FoldedLinear):
    """Rule 7's result: `input_shift` (C_in,) is what must stay as an Add before the Conv
    (None when the shift folded into the bias too)."""

    input_shift: np.ndarray | None = None


def _same_channels(expected: int, got: int, what: str) -> None:
    if expected != got:
        raise FoldRejected(f"cannot {what}: the affine has {got} channels, the op {expected}")


def _finish(weight64: np.ndarray, bias64: np.ndarray, original_weight: np.ndarray,
            original_bias: np.ndarray | None, what: str) -> tuple[np.ndarray, np.ndarray]:
    dtype = original_weight.dtype
    bias_dtype = original_bias.dtype if original_bias is not None else dtype
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught just below
        weight, bias = weight64.astype(dtype), bias64.astype(bias_dtype)
    for name, value in (("weight", weight), ("bias", bias)):
        if not np.all(np.isfinite(value)):
            raise FoldRejected(f"{what} would make the {name} non-finite in {dtype}")
    return weight, bias


def _max_abs(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def _bias64(bias: np.ndarray | None, channels: int) -> np.ndarray:
    return np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)


def fold_into_matmul(affine: ChannelAffine, weight: np.ndarray,
                     bias: np.ndarray | None = None) -> FoldedLinear:
    """Rule 1, MatMul consumer: (a⊙x + b) @ W + c  ->  x @ (a[:,None]·W) + (b @ W + c).

    weight: (C_in, C_out), C_in = the affine's channels. bias: (C_out,) or None.
    """
    _same_channels(weight.shape[0], affine.channels, "fold into MatMul")
    w = weight.astype(np.float64)
    new_w = affine.scale[:, None] * w
    new_b = affine.shift @ w + _bias64(bias, weight.shape[1])
    out_w, out_b = _finish(new_w, new_b, weight, bias, "folding into the MatMul")
    return FoldedLinear(out_w, out_b, _max_abs(weight), _max_abs(out_w))


def fold_into_gemm(affine: ChannelAffine, weight: np.ndarray, bias: np.ndarray | None,
                   trans_b: bool) -> FoldedLinear:
    """Rule 1, Gemm consumer (alpha = beta = 1): transB=1 means weight is (C_out, C_in)."""
    if not trans_b:
        return fold_into_matmul(affine, weight, bias)
    _same_channels(weight.shape[1], affine.channels, "fold into Gemm")
    w = weight.astype(np.float64)
    new_w = w * affine.scale[None, :]
    new_b = w @ affine.shift + _bias64(bias, weight.shape[0])
    out_w, out_b = _finish(new_w, new_b, weight, bias, "folding into the Gemm")
    return FoldedLinear(out_w, out_b, _max_abs(weight), _max_abs(out_w))


def fold_into_producer(affine: ChannelAffine, weight: np.ndarray, bias: np.ndarray | None,
                       output_axis: int) -> FoldedLinear:
    """Rule 2: A(x @ W + c) = x @ (W·a) + (a⊙c + b), scaling W along its output-channel axis.

    output_axis: 1 for MatMul (C_in, C_out) and Gemm transB=0, 0 for Gemm transB=1 and Conv
    (C_out, C_in/group, *kernel).
    """
    channels = weight.shape[output_axis]
    _same_channels(channels, affine.channels, "fold into the producer")
    shape = [1] * weight.ndim
    shape[output_axis] = channels
    new_w = weight.astype(np.float64) * affine.scale.reshape(shape)
    new_b = affine.scale * _bias64(bias, channels) + affine.shift
    out_w, out_b = _finish(new_w, new_b, weight, bias, "folding into the producer")
    return FoldedLinear(out_w, out_b, _max_abs(weight), _max_abs(out_w))


def divide_producer(affine: ChannelAffine, weight: np.ndarray, bias: np.ndarray | None,
                    output_axis: int, min_abs_scale: float = 1e-12) -> FoldedLinear:
    """Rule 5: the residual branch w = x @ W + c joins a pending affine's stream p, so
    a⊙p + b + w = a⊙(p + w⊘a) + b: divide W's output channels and c by a."""
    tiny = np.abs(affine.scale) < min_abs_scale
    if np.any(tiny):
        raise FoldRejected(
            f"the pending scale is ~0 on {int(tiny.sum())} channel(s) (|a| < {min_abs_scale}): "
            "dividing the residual branch by it is not finite")
    reciprocal = ChannelAffine(1.0 / affine.scale, np.zeros(affine.channels))
    return fold_into_producer(reciprocal, weight, bias, output_axis)


def fold_into_conv_consumer(affine: ChannelAffine, weight: np.ndarray, bias: np.ndarray | None,
                            zero_padding: bool, group: int = 1,
                            min_abs_scale: float = 1e-12) -> FoldedConvConsumer:
    """Rule 7: a Conv reading a⊙x + b. W' = W·a per input channel always; the shift goes into
    the bias (c' = c + Σ_{in,kernel} W b) only when every pad is zero, else it stays as an Add
    of b⊘a before the Conv (needs a ≠ 0; refused otherwise)."""
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    _same_channels(in_per_group * group, affine.channels, "fold into the Conv")
    w = weight.astype(np.float64)
    spatial = (1,) * (weight.ndim - 2)
    # input channel i of group g sits at weight[g*out_per_group:(g+1)*out_per_group, i % in]
    out_per_group = out_channels // group
    scale = affine.scale.reshape(group, 1, in_per_group, *spatial)
    grouped = w.reshape(group, out_per_group, in_per_group, *weight.shape[2:])
    new_w = (grouped * scale).reshape(weight.shape)
    new_b = _bias64(bias, out_channels)
    input_shift = None
    if zero_padding:
        shift = affine.shift.reshape(group, 1, in_per_group, *spatial)
        new_b = new_b + (grouped * shift).reshape(out_channels, -1).sum(axis=1)
    elif np.any(affine.shift != 0):
        tiny = np.abs(affine.scale) < min_abs_scale
        if np.any(tiny):
            raise FoldRejected(
                f"the Conv pads its input and the scale is ~0 on {int(tiny.sum())} channel(s): "
                "the shift cannot move past the scale exactly")
        input_shift = (affine.shift / affine.scale).astype(weight.dtype)
        if not np.all(np.isfinite(input_shift)):
            raise FoldRejected("the shift b/a left before the Conv would be non-finite")
    out_w, out_b = _finish(new_w, new_b, weight, bias, "folding into the Conv")
    return FoldedConvConsumer(out_w, out_b, _max_abs(weight), _max_abs(out_w), input_shift)
