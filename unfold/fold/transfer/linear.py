"""MatMul and Gemm: the linears, in both directions.

Forward, with a constant weight, reading the pending as their data input:

consumer-linear (a sink, rule 1): the scale varies along the contraction axis only, so it goes
into the weight's rows; the shift goes through the weight into the bias:
    (x⊙s + b) @ W + c = x @ (diag(s) W) + (b @ W + c)       (Gemm transB: W's columns)
A MatMul without a bias Add passes b @ W on as a pending shift (one Add, wherever it ends).

token-linear (a transfer): the scale is constant along the contraction axis (a token-mixing
linear, MLP-Mixer/ResMLP, reading channels-first tokens), so it commutes; the shift goes through
the weight, into the bias Add where there is one (it becomes a (C, T') constant there):
    (s⊙x + b) @ W + c = s⊙(x @ W + (b @ W + c)⊘s)
The arithmetic is algebra.fold_matmul_reader / fold_gemm_reader. A MatMul of two variables is
attention's (attention.matmul).

Backward, as the producer of a tensor an affine is asked of (rule 2, backward.into_producer):
the weight's output columns take the scale, the bias the shift; a MatMul has no bias to take it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import (
    Affine,
    FoldRejected,
    broadcasts_within,
    fold_gemm_reader,
    fold_matmul_reader,
    shift_through_weight,
)
from unfold.fold.backward import (
    PRODUCER,
    PRODUCER_RULE,
    ProducerLayout,
    Walk,
    deep,
    into_producer,
)
from unfold.fold.flow import (
    Context,
    Fill,
    Handler,
    Move,
    Pending,
    Replace,
    Rule,
    Stop,
    Write,
    named,
)
from unfold.fold.transfer import attention

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

CONSUMER = "consumer-linear"
TOKEN = "token-linear"
CONSUMER_RULE = Rule(CONSUMER, "sink", "(x⊙s + b) @ W + c = x @ (diag(s) W) + (b @ W + c)")
TOKEN_RULE = Rule(TOKEN, "transfer", "(s⊙x + b) @ W + c = s⊙(x @ W + (b @ W + c)⊘s) for s "
                                     "constant along the contraction", frozenset({"MatMul"}))


def _bias_add(matmul: gs.Node, ctx: Context) -> tuple[gs.Node, int, np.ndarray] | None:
    """The Add of a constant that alone reads the MatMul's output: (Add, slot, constant)."""
    out = matmul.outputs[0]
    readers = ctx.value_readers(out)
    if ctx.is_output(out) or len(readers) != 1 or readers[0].op != "Add" or \
            len(readers[0].inputs) != 2:
        return None
    add = readers[0]
    slot = 1 if add.inputs[0] is out else 0
    value = ctx.constant(add.inputs[slot])
    shape = ctx.shape(out)
    if value is None or add.inputs[1 - slot] is not out or shape is None or \
            value.ndim > len(shape):
        return None
    aligned = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    return (add, slot, value) if broadcasts_within(aligned, shape) else None


def _matmul(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop | None:
    weight = ctx.constant_shape(node.inputs[1])  # (its values: ctx.computed, once)
    if weight is None:
        return None  # two variables: attention's business
    if len(weight) != 2:
        return Stop(f"its weight is not 2-D ({len(weight)}-D)")
    affine = pending.affine
    rank = affine.rank
    scale = affine.scale_vector(rank - 1, weight[0])
    if scale is not None:  # varies along the contraction axis only (or not at all)
        rule, left = CONSUMER, None
    elif affine.scale.shape[-1] == 1:  # constant along the contraction axis: it commutes
        rule, left = TOKEN, Affine(affine.scale, np.zeros(1))
    else:
        return Stop("its scale varies along the contraction axis and along others")
    bias = _bias_add(node, ctx)
    c = bias[2] if bias is not None else None
    shift = affine.shift if affine.has_shift else None
    divisor = left.scale if left is not None and left.has_scale and c is not None else None
    try:
        folded = ctx.computed(fold_matmul_reader,
                              (node.inputs[1], bias[0].inputs[bias[1]] if bias else None),
                              row_scale=scale, shift=shift if bias else None,
                              bias_divisor=divisor)
    except FoldRejected as rejected:
        return Stop(rejected.reason)
    outputs: dict[str, Pending] = {}
    if bias is not None:
        if left is not None and not left.is_identity():
            outputs[bias[0].outputs[0].name] = pending.then(left)
    else:  # no bias: what b @ W adds rides on the MatMul's output as a pending shift
        term = ctx.computed(shift_through_weight, (node.inputs[1],), shift) \
            if shift is not None else np.zeros(1)
        after = Affine(left.scale if left is not None else np.ones((1,) * rank), term)
        if not after.is_identity():
            outputs[node.outputs[0].name] = pending.then(after)

    writes: list[Write] = []
    if folded.weight is not None:
        writes.append(Replace(node, 1, folded.weight, (folded.max_abs_weight_before,
                                                       folded.max_abs_weight_after)))
    if bias is not None and folded.bias is not None:
        writes.append(Replace(bias[0], bias[1], folded.bias))
    if rule == CONSUMER:
        return Move(rule, "", (0,), outputs, writes=tuple(writes), absorbed_by=(node.name,))
    return Move(rule, f"moved past MatMul '{node.name}' (a linear over an axis the scale is "
                      f"constant along)", (0,), outputs, writes=tuple(writes))


def _gemm(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop | None:
    weight = ctx.constant_shape(node.inputs[1])  # (its values: ctx.computed, once)
    if weight is None:
        return Stop("its B is not constant")
    if node.attrs.get("transA", 0):
        return Stop("it transposes its input (transA)")
    affine = pending.affine
    trans_b = bool(node.attrs.get("transB", 0))
    k = weight[1] if trans_b else weight[0]
    scale, shift = affine.scale_vector(1, k), affine.shift_vector(1, k)
    if scale is None or shift is None:
        return Stop("its affine varies along more than the contraction axis")
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    has_c = len(node.inputs) > 2 and bool(node.inputs[2].name)
    c = ctx.constant(node.inputs[2]) if has_c else None
    if has_c and c is None:
        return Stop("its C is not constant")
    try:
        folded = ctx.computed(fold_gemm_reader, (node.inputs[1], node.inputs[2] if has_c else None),
                              scale, shift, trans_b=trans_b, alpha=alpha, beta=beta)
    except FoldRejected as rejected:
        return Stop(rejected.reason)

    new_b, new_c, before, after = folded
    writes: list[Write] = [Replace(node, 1, new_b, (before, after))]
    if c is not None and beta != 0.0:
        writes.append(Replace(node, 2, new_c))
    elif np.any(new_c != 0):
        writes.append(Fill(node, 2, new_c, f"{node.name}_C", {"beta": 1.0}))
    return Move(CONSUMER, "", (0,), {}, writes=tuple(writes), absorbed_by=(node.name,))


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if node.op == "MatMul" and all(ctx.constant(t) is None for t in node.inputs):
        return attention.matmul(node, pendings, ctx)
    if set(pendings) != {0}:
        return None
    if node.op == "MatMul":
        return _matmul(node, pendings[0], ctx)
    return _gemm(node, pendings[0], ctx)


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    """Rule 2 into a producer MatMul (no bias: the scale only) or Gemm (alpha = beta = 1)."""
    walk.use(PRODUCER)
    ctx, what = walk.ctx, named(node)
    weight_shape = ctx.constant_shape(node.inputs[1])  # (its values: into_producer, once)
    if weight_shape is None:
        raise deep(f"its producer {what} has no constant weight")
    if node.op == "MatMul":
        if len(weight_shape) != 2:
            raise deep(f"its producer {what} has no 2-D weight")
        layout = ProducerLayout(affine.rank - 1, 1, weight_shape[1], False, False)
        return into_producer(node, affine, walk, want_shift, layout)
    if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
        raise deep(f"its producer {what} has alpha/beta other than 1")
    out_axis = 0 if node.attrs.get("transB", 0) else 1
    has_bias_slot = len(node.inputs) > 2
    if has_bias_slot:
        bias = ctx.constant_shape(node.inputs[2])
        if bias is None or len(bias) > 1:
            raise deep(f"its producer {what} has a C that is not a constant vector")
    layout = ProducerLayout(1, out_axis, weight_shape[out_axis], has_bias_slot, True)
    return into_producer(node, affine, walk, want_shift, layout)


HANDLER = Handler("linear", frozenset({"MatMul", "Gemm"}),
                  (CONSUMER_RULE, TOKEN_RULE, attention.RULE, PRODUCER_RULE), prep, back,
                  {"MatMul": "its weight's output columns take the scale (rule 2); it has no "
                             "bias for the shift",
                   "Gemm": "its weight's output channels take the scale, C the shift (rule 2)"})
