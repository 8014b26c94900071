"""The folding algebra of DESIGN.md, on numpy arrays only: nothing here knows ONNX.

An offline norm in eval mode is a per-channel affine A(x) = a⊙x + b on the channel axis. Each
function below takes constants, computes in float64, checks the result is finite, and returns
new constants in the weights' dtype; the graph rewriter decides where they go. Shapes follow
ONNX: MatMul weights are (C_in, C_out), Gemm's B is (C_out, C_in) when transB=1, Conv weights
are (C_out, C_in/group, *kernel).

One affine type, `Affine` (below): scale and shift broadcast against the tensor they act on. The
functions that fold into one op's weights take the (C,) vectors its channels need; each is the
one the graph code calls, and tests/fold/test_algebra.py checks it against the unfused
computation. Rules (numbers as in DESIGN.md):

1. into a consumer MatMul:   (a⊙x + b) W + c = x (diag(a) W) + (b W + c)   (fold_matmul_reader)
   into a consumer Gemm, transB=1:   W' = W diag(a) (scale B's columns), c' = W b + c
                                                                            (fold_gemm_reader)
2. into a producer (MatMul/Gemm/Conv whose only consumer is the norm): scale the output
   channels, W' = W·a (per output channel), c' = a⊙c + b                 (fold_into_producer)
4. composition:   A2(A1(x)) = (a2⊙a1)⊙x + (a2⊙b1 + b2)
5. pending affine through a residual Add:   a⊙p + b + w = a⊙(p + w⊘a) + b, so the linear that
   produces w gets its output channels (and bias) divided by a: rule 2 with the affine 1/a
7. into a consumer Conv: a always (W' = W·a per input channel); b only when every pad is zero
   (c' = c + Σ W b); with padding the shift stays as an Add of b⊘a before the Conv, which is
   exact because zero padding commutes with the per-channel scale:
   conv(pad(a⊙x + b)) = conv_{W·a}(pad(x + b⊘a))                      (fold_into_conv_consumer)
6. into embedding tables, a block of rows at a time                          (rows_affine)
9. a fold that would make a weight non-finite is refused (`FoldRejected`), and every result
   reports the largest |weight| before and after, for judging an fp16 build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unfold.numerics import MIN_ABS_SCALE


class FoldRejected(ValueError):
    """A fold that cannot be done exactly or safely; `reason` says why (goes in the report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def batch_norm_affine(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization in inference mode as (scale, shift) vectors: a = γ / sqrt(var + eps),
    b = β - mean·a."""
    scale = np.asarray(gamma, dtype=np.float64) / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    return scale, np.asarray(beta, dtype=np.float64) - np.asarray(mean, dtype=np.float64) * scale


@dataclass(frozen=True)
class FoldedLinear:
    """New constants for a linear op, and the largest |weight| before and after (rule 9)."""

    weight: np.ndarray
    bias: np.ndarray
    max_abs_weight_before: float
    max_abs_weight_after: float


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


def max_abs(x: np.ndarray) -> float:
    """The largest |value|, without an |x| copy of a large weight."""
    return max(float(x.max()), -float(x.min())) if x.size else 0.0


def _bias64(bias: np.ndarray | None, channels: int) -> np.ndarray:
    return np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)


def fold_into_producer(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                       shift: np.ndarray, output_axis: int) -> FoldedLinear:
    """Rule 2: A(x @ W + c) = x @ (W·a) + (a⊙c + b), scaling W along its output-channel axis;
    `scale` and `shift` are (C,) vectors.

    output_axis: 1 for MatMul (C_in, C_out) and Gemm transB=0, 0 for Gemm transB=1 and Conv
    (C_out, C_in/group, *kernel).
    """
    channels = weight.shape[output_axis]
    scale, shift = _vectors(scale, shift)
    _same_channels(channels, scale.shape[0], "fold into the producer")
    shape = [1] * weight.ndim
    shape[output_axis] = channels
    new_w = weight.astype(np.float64) * scale.reshape(shape)
    new_b = scale * _bias64(bias, channels) + shift
    out_w, out_b = _finish(new_w, new_b, weight, bias, "folding into the producer")
    return FoldedLinear(out_w, out_b, max_abs(weight), max_abs(out_w))


def fold_into_conv_consumer(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                            shift: np.ndarray, group: int = 1) -> FoldedLinear:
    """Rule 7, a Conv reading a⊙x + b (`scale`, `shift`: (C_in,) vectors): W' = W·a per input
    channel, c' = c + Σ_{in,kernel} W b. Exact where the Conv pads nothing; where it pads, the
    caller passes a zero shift and keeps an Add of b⊘a before the Conv (exact: zero padding
    commutes with the scale, conv(pad(a⊙x + b)) = conv_{W·a}(pad(x + b⊘a)))."""
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    scale, shift = _vectors(scale, shift)
    _same_channels(in_per_group * group, scale.shape[0], "fold into the Conv")
    w = weight.astype(np.float64)
    spatial = (1,) * (weight.ndim - 2)
    # input channel i of group g sits at weight[g*out_per_group:(g+1)*out_per_group, i % in]
    out_per_group = out_channels // group
    grouped = w.reshape(group, out_per_group, in_per_group, *weight.shape[2:])
    new_w = (grouped * scale.reshape(group, 1, in_per_group, *spatial)).reshape(weight.shape)
    bias_term = (grouped * shift.reshape(group, 1, in_per_group, *spatial)
                 ).reshape(out_channels, -1).sum(axis=1)
    out_w, out_b = _finish(new_w, _bias64(bias, out_channels) + bias_term, weight, bias,
                           "folding into the Conv")
    return FoldedLinear(out_w, out_b, max_abs(weight), max_abs(out_w))


def _vectors(scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if scale.shape != shift.shape:
        raise ValueError(f"scale {scale.shape} and shift {shift.shape} differ in length")
    return scale, shift


# ---------------------------------------------------------------------------------------------
# The dataflow pass's state: an affine as two constants broadcast against the tensor it acts on
# ---------------------------------------------------------------------------------------------
#
# A pending affine on a tensor t of rank r says: the value the original graph computes there is
# scale ⊙ p + shift, where p is what the rewritten graph computes (its *carrier*). scale and
# shift are float64 arrays of rank r whose every dim is 1 or t's (static) dim: a norm's is per
# channel on one axis ((1, 1, C) on tokens, (1, C, 1, 1) on NCHW); moving it through layout ops
# moves those dims (a Transpose transposes them, a Reshape that merges 2x2 patches tiles them);
# a linear over tokens turns a per-channel shift into a (C, T) one. Layout ops act on the two
# constants exactly as on the tensor, which is why one set of numpy functions below serves every
# layout op's transfer.

MAX_CONSTANT_ELEMENTS = 1 << 22  # a shift that would need more than this stays materialized


def _as_rank(value: np.ndarray, rank: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        raise ValueError(f"a constant of rank {value.ndim} cannot act on a tensor of rank {rank}")
    return value.reshape((1,) * (rank - value.ndim) + value.shape)


def compress(value: np.ndarray) -> np.ndarray:
    """`value` with every axis along which it is constant reduced to size 1 (it broadcasts to
    the same thing)."""
    for axis in range(value.ndim):
        if value.shape[axis] > 1 and np.all(value == value.take([0], axis=axis)):
            value = value.take([0], axis=axis)
    return value


@dataclass(frozen=True)
class Affine:
    """y = scale ⊙ x + shift, scale and shift float64 arrays of x's rank that broadcast to it."""

    scale: np.ndarray
    shift: np.ndarray

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float64)
        shift = np.asarray(self.shift, dtype=np.float64)
        if scale.ndim != shift.ndim:
            rank = max(scale.ndim, shift.ndim)
            scale, shift = _as_rank(scale, rank), _as_rank(shift, rank)
        object.__setattr__(self, "scale", compress(scale))
        object.__setattr__(self, "shift", compress(shift))

    @classmethod
    def identity(cls, rank: int) -> Affine:
        return cls(np.ones((1,) * rank), np.zeros((1,) * rank))

    @classmethod
    def shift_only(cls, shift: np.ndarray) -> Affine:
        shift = np.asarray(shift, dtype=np.float64)
        return cls(np.ones((1,) * shift.ndim), shift)

    @property
    def rank(self) -> int:
        return self.scale.ndim

    @property
    def has_scale(self) -> bool:
        return bool(np.any(self.scale != 1.0))

    @property
    def has_shift(self) -> bool:
        return bool(np.any(self.shift != 0.0))

    def is_identity(self) -> bool:
        return not self.has_scale and not self.has_shift

    def finite_in(self, dtype: np.dtype) -> bool:
        """Both constants hold in `dtype` (what materializing it would write)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return all(bool(np.all(np.isfinite(v.astype(dtype)))) for v in (self.scale,
                                                                             self.shift))

    def ops(self) -> int:
        """Nodes it takes to materialize: a Mul when it scales, an Add when it shifts."""
        return int(self.has_scale) + int(self.has_shift)

    def then(self, second: Affine) -> Affine:
        """Rule 4: second(self(x)) = (s2⊙s1)⊙x + (s2⊙b1 + b2)."""
        return Affine(second.scale * self.scale, second.scale * self.shift + second.shift)

    def map(self, layout, scale_fill: float = 1.0, shift_fill: float = 0.0) -> Affine | None:
        """Both constants through the same layout function `layout(value, fill)` (None when it
        cannot map them: the affine does not survive that op)."""
        scale, shift = layout(self.scale, scale_fill), layout(self.shift, shift_fill)
        if scale is None or shift is None:
            return None
        return Affine(scale, shift)

    def size(self) -> int:
        return int(max(self.scale.size, self.shift.size))

    def varying_axes(self) -> set[int]:
        return {a for a in range(self.rank)
                if self.scale.shape[a] > 1 or self.shift.shape[a] > 1}

    def scale_vector(self, axis: int, channels: int) -> np.ndarray | None:
        """The scale as a (channels,) vector when it varies along `axis` only (a scalar scale
        broadcast), else None."""
        return _vector(self.scale, axis, channels)

    def shift_vector(self, axis: int, channels: int) -> np.ndarray | None:
        return _vector(self.shift, axis, channels)

    def channel_range(self) -> tuple[float, float]:
        """min and max of |scale| (what dividing by it does to weights: rule 9)."""
        magnitude = np.abs(self.scale)
        return float(magnitude.min()), float(magnitude.max())


def _vector(value: np.ndarray, axis: int, channels: int) -> np.ndarray | None:
    if any(d != 1 for a, d in enumerate(value.shape) if a != axis % value.ndim):
        return None
    vector = value.reshape(-1)
    if vector.size == 1:
        return np.full(channels, float(vector[0]))
    return vector if vector.size == channels else None


def affine_of_step(op: str, constant: np.ndarray, data_rank: int, constant_first: bool
                   ) -> Affine | None:
    """The affine of one elementwise op with a constant operand: x*c, x+c, x-c, c-x, x/c (c/x is
    not affine: None; nor is x/c with a zero in c)."""
    c = _as_rank(constant, data_rank)
    ones, zeros = np.ones_like(c), np.zeros_like(c)
    if op == "Mul":
        return Affine(c, zeros)
    if op == "Add":
        return Affine(ones, c)
    if op == "Sub":
        return Affine(-ones, c) if constant_first else Affine(ones, -c)
    if op == "Div":
        if constant_first or np.any(c == 0):
            return None
        return Affine(1.0 / c, zeros)
    return None


def broadcasts_within(value: np.ndarray, shape) -> bool:
    """Every dim of `value` is 1 or the tensor's (static) dim: it does not enlarge the tensor."""
    if shape is None or len(shape) != value.ndim:
        return False
    return all(d == 1 or (isinstance(s, int) and d == s) for d, s in zip(value.shape, shape,
                                                                       strict=True))


# --- layout functions: act on a broadcast constant as the op acts on the tensor --------------

def transpose_constant(value: np.ndarray, perm) -> np.ndarray:
    return np.transpose(value, list(perm))


def inverse_permutation(perm) -> list[int]:
    """The perm of the Transpose that undoes Transpose(perm)."""
    return [int(axis) for axis in np.argsort(list(perm))]


def unsqueeze_constant(value: np.ndarray, axes) -> np.ndarray:
    out_rank = value.ndim + len(axes)
    for axis in sorted(a % out_rank for a in axes):
        value = np.expand_dims(value, axis)
    return value


def squeeze_constant(value: np.ndarray, axes) -> np.ndarray | None:
    axes = sorted({a % value.ndim for a in axes})
    if any(value.shape[a] != 1 for a in axes):
        return None
    return np.squeeze(value, axis=tuple(axes)) if axes else value


def _static(dim) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0


def reshape_constant(value: np.ndarray, in_shape, out_shape) -> np.ndarray | None:
    """A constant that broadcasts against a tensor of `in_shape`, as it broadcasts against
    reshape(tensor, out_shape); None when that is no broadcastable constant we can write.

    Dims are grouped into blocks whose element counts match (from both ends, so a dynamic batch
    or an unknown middle dim is fine where the constant is 1 over it); over a block where the
    constant is all 1s it stays 1s, over one where it varies it is written out whole (static
    dims only), reshaped, and compressed again: merging 2x2 patches' channels tiles a per-
    channel vector 4 times, splitting C into heads splits it."""
    if in_shape is None or out_shape is None or value.ndim != len(in_shape):
        return None
    in_shape, out_shape = list(in_shape), list(out_shape)

    def same(a, b) -> bool:
        return a == b and a is not None

    head: list[tuple[list[int], list[int]]] = []  # blocks matched from the front
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        if same(in_shape[i], out_shape[j]):
            head.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        block = _static_block(in_shape, out_shape, i, j, step=1)
        if block is None:
            break
        head.append(block)
        i, j = max(block[0]) + 1, max(block[1]) + 1
    tail: list[tuple[list[int], list[int]]] = []
    ii, jj = len(in_shape) - 1, len(out_shape) - 1
    while ii >= i and jj >= j:
        if same(in_shape[ii], out_shape[jj]):
            tail.append(([ii], [jj]))
            ii, jj = ii - 1, jj - 1
            continue
        block = _static_block(in_shape, out_shape, ii, jj, step=-1)
        if block is None or min(block[0]) < i or min(block[1]) < j:
            break
        tail.append(block)
        ii, jj = min(block[0]) - 1, min(block[1]) - 1
    middle = (list(range(i, ii + 1)), list(range(j, jj + 1)))
    blocks = head + ([middle] if middle[0] or middle[1] else []) + tail[::-1]
    expand_to: list[int] = []  # value written out over the blocks where it varies
    result_shape: list[int] = []
    for ins, outs in blocks:
        if all(value.shape[a] == 1 for a in ins):
            expand_to += [1] * len(ins)
            result_shape += [1] * len(outs)
            continue
        dims_in = [in_shape[a] for a in ins]
        dims_out = [out_shape[a] for a in outs]
        if not all(_static(d) for d in dims_in + dims_out) or \
                int(np.prod(dims_in)) != int(np.prod(dims_out)):
            return None
        expand_to += dims_in
        result_shape += dims_out
    if int(np.prod(expand_to)) > MAX_CONSTANT_ELEMENTS:
        return None
    # blocks are contiguous and in order: one reshape of the whole array reshapes each block
    full = np.broadcast_to(value, expand_to)
    return compress(np.ascontiguousarray(full).reshape(result_shape))


def _static_block(in_shape, out_shape, i: int, j: int, step: int):
    """Starting at in_shape[i] and out_shape[j] (walking by `step`), the smallest run of static
    dims on each side with the same number of elements; None if a dim on the way is unknown."""
    ins, outs = [i], [j]
    if not (_static(in_shape[i]) and _static(out_shape[j])):
        return None
    p, q = in_shape[i], out_shape[j]
    while p != q:
        if p < q:
            nxt = ins[-1] + step
            if not 0 <= nxt < len(in_shape) or not _static(in_shape[nxt]):
                return None
            ins.append(nxt)
            p *= in_shape[nxt]
        else:
            nxt = outs[-1] + step
            if not 0 <= nxt < len(out_shape) or not _static(out_shape[nxt]):
                return None
            outs.append(nxt)
            q *= out_shape[nxt]
    return sorted(ins), sorted(outs)


def slice_constant(value: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    """ONNX Slice on a broadcast constant: axes where it is 1 stay 1 (every element the same)."""
    index = [slice(None)] * value.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = int(axis) % value.ndim
        if value.shape[axis] != 1:
            index[axis] = slice(int(start), int(end), int(step))
    return value[tuple(index)]


def gather_constant(value: np.ndarray, indices: np.ndarray | None, index_rank: int,
                    axis: int) -> np.ndarray | None:
    """ONNX Gather on a broadcast constant. Indices may be unknown (None) only where the
    constant is 1 along `axis` (then each gathered element is that same value)."""
    axis %= value.ndim
    if value.shape[axis] == 1:
        shape = value.shape[:axis] + (1,) * index_rank + value.shape[axis + 1:]
        return value.reshape(shape)
    if indices is None:
        return None
    return np.take(value, np.asarray(indices, dtype=np.int64), axis=axis)


def pad_constant(value: np.ndarray, pads, shape, fill: float) -> np.ndarray | None:
    """ONNX Pad (constant mode) of a broadcast constant with `fill` at the new positions. An
    axis padded by a non-zero amount must be written out whole first (static dim)."""
    rank = value.ndim
    widths = [(int(pads[a]), int(pads[a + rank])) for a in range(rank)]
    if any(b < 0 or e < 0 for b, e in widths):
        return None  # negative pads crop: a Slice, not handled here
    target = []
    for a, (b, e) in enumerate(widths):
        if (b or e) and value.shape[a] == 1 and (fill != 0.0 or np.any(value != 0)):
            if not _static(shape[a]):
                return None
            target.append(shape[a])
        else:
            target.append(value.shape[a])
    full = np.broadcast_to(value, target)
    if full.size > MAX_CONSTANT_ELEMENTS:
        return None
    padded_widths = [w if full.shape[a] > 1 or value.shape[a] > 1 else (0, 0)
                     for a, w in enumerate(widths)]
    return np.pad(full, padded_widths, constant_values=fill)


def concat_constants(values: list[np.ndarray], axis: int, sizes: list[int | None]
                     ) -> np.ndarray | None:
    """The broadcast constant of Concat(parts, axis), each part's constant given with its size
    along `axis` (None when unknown: only allowed if every part's constant is the same and 1
    along the axis)."""
    axis %= values[0].ndim
    rank = values[0].ndim
    if all(v.shape[axis] == 1 for v in values):
        other = [tuple(d for a, d in enumerate(v.shape) if a != axis) for v in values]
        shape = [max(ds) for ds in zip(*other, strict=True)] if rank > 1 else []
        expanded = [np.broadcast_to(np.squeeze(v, axis), shape) for v in values]
        if all(np.array_equal(expanded[0], e) for e in expanded[1:]):
            return values[0] if all(v.shape == values[0].shape for v in values) else \
                np.expand_dims(expanded[0], axis)
    if any(s is None for s in sizes):
        return None
    parts = []
    full_shape = [max(v.shape[a] for v in values) for a in range(rank)]
    for value, size in zip(values, sizes, strict=True):
        shape = list(full_shape)
        shape[axis] = size
        parts.append(np.broadcast_to(value, shape))
    joined = np.concatenate(parts, axis=axis)
    return None if joined.size > MAX_CONSTANT_ELEMENTS else compress(joined)


def reduce_mean_constant(value: np.ndarray, axes, keepdims: bool) -> np.ndarray:
    axes = tuple(sorted({a % value.ndim for a in axes}))
    reduced = value.mean(axis=axes, keepdims=True)
    return reduced if keepdims else np.squeeze(reduced, axis=axes)


# --- the linear readers of a broadcast affine (transfer/linear.py) ---------------------------

@dataclass(frozen=True)
class MatMulFold:
    """New constants for MatMul(x, W) (+ c) reading s⊙x + b: `weight` (None: unchanged) and
    `bias` (None: no bias needed), with the largest |weight| before and after."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    max_abs_weight_before: float
    max_abs_weight_after: float


def fold_matmul_reader(weight: np.ndarray, bias: np.ndarray | None, *,
                       row_scale: np.ndarray | None, shift: np.ndarray | None,
                       bias_divisor: np.ndarray | None = None) -> MatMulFold:
    """(s⊙x + b) @ W + c, for a 2-D weight W (K, N):

    - row_scale (K,): the scale along the contraction axis goes into W's rows (rule 1);
      None when it stays pending (a token linear: constant along the contraction axis);
    - shift: b broadcast against x (its last dim 1 or K): the term b @ W, a (…, N) constant,
      is added to c (a bias that broadcasts, or a new one);
    - bias_divisor: the scale still pending after the bias (token linear): the new bias is
      (c + b @ W) ⊘ s, so that s⊙(x @ W + bias) = s⊙(x @ W) + (c + b @ W).
    Computed in float64; a result that is not finite in the weights' dtype is refused."""
    w = weight.astype(np.float64)
    new_weight = None
    if row_scale is not None:
        new_weight = row_scale.reshape(-1, 1) * w
    changed = shift is not None or bias_divisor is not None
    total = None if bias is None or not changed else np.asarray(bias, dtype=np.float64)
    if shift is not None:
        term = shift_through_weight(weight, shift)
        total = term if total is None else total + term
    if total is not None and bias_divisor is not None:
        if np.any(np.abs(bias_divisor) < MIN_ABS_SCALE):
            raise FoldRejected("the scale is ~0 on some channel: the bias cannot be divided "
                               "by it")
        total = total / bias_divisor
    if total is not None and bias is not None and total.size == np.size(bias):
        total = total.reshape(np.shape(bias))
    out_weight, out_bias = _finish(new_weight if new_weight is not None else w,
                                   total if total is not None else np.zeros(1), weight,
                                   None if bias is None else np.asarray(bias),
                                   "folding into the MatMul")
    return MatMulFold(out_weight if new_weight is not None else None,
                      out_bias if total is not None else None, max_abs(weight),
                      max_abs(out_weight))


def shift_through_weight(weight: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """b @ W in float64, b broadcast against the MatMul's input (its last dim 1 or K): what a
    bias-less linear passes on of the shift."""
    w = weight.astype(np.float64)
    return np.broadcast_to(shift, shift.shape[:-1] + (w.shape[0],)) @ w


def fold_gemm_reader(weight: np.ndarray, c: np.ndarray | None, scale: np.ndarray,
                     shift: np.ndarray, *, trans_b: bool, alpha: float, beta: float
                     ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Gemm(s⊙x + b, B, C) = alpha·x·op(B)' + beta·C': op(B)' = diag(s) op(B), and
    C' = C + alpha·(b @ op(B)) / beta (a new C, with beta 1, when there is none or beta is 0).
    Returns (B', C', max |B| before, after)."""
    w = weight.astype(np.float64)
    op_b = w.T if trans_b else w
    folded = scale[:, None] * op_b
    term = alpha * (shift @ op_b)
    if c is not None and beta != 0.0:
        total = np.asarray(c, dtype=np.float64) + term / beta
        total = total.reshape(np.shape(c)) if total.size == np.size(c) else total
        c_dtype = np.asarray(c).dtype
    else:
        total, c_dtype = term, weight.dtype
    new_b, new_c = _finish(folded.T if trans_b else folded, total, weight,
                           np.zeros(1, dtype=c_dtype), "folding into the Gemm")
    return new_b, new_c, max_abs(weight), max_abs(new_b)


def fold_into_table(table: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> FoldedLinear:
    """Rule 6, an embedding table T (V, C) whose rows are looked up: s⊙T + b, computed into
    `table` itself (a copy the caller owns). Its `bias` is unused (empty)."""
    before = max_abs(table)
    value = rows_affine(table, scale, shift, in_place=True)
    if value is None:
        raise FoldRejected(f"it would not be finite in {table.dtype}")
    return FoldedLinear(value, np.empty(0), before, max_abs(value))


ROWS_PER_STEP_ELEMENTS = 1 << 20  # rows_affine's working set: a few MiB of float64 at a time


def rows_affine(table: np.ndarray, scale: np.ndarray, shift: np.ndarray, *,
                in_place: bool = False) -> np.ndarray | None:
    """s⊙T + b for a table T (V, C) in its own dtype, computed in float64 a block of rows at a
    time (a 30522 x 768 embedding table would otherwise need three float64 copies at once),
    into T itself with `in_place`; None when a value is not finite in that dtype."""
    out = table if in_place else np.empty_like(table)
    step = max(1, ROWS_PER_STEP_ELEMENTS // max(1, table.shape[-1]))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, table.shape[0], step):
            block = table[start:start + step].astype(np.float64)
            block *= scale
            block += shift
            out[start:start + step] = block
            if not np.all(np.isfinite(out[start:start + step])):
                return None
    return out
