"""MatMul and Gemm with a constant weight, reading the pending as their data input.

consumer-linear (a sink, rule 1): the scale varies along the contraction axis only, so it goes
into the weight's rows; the shift goes through the weight into the bias:
    (x⊙s + b) @ W + c = x @ (diag(s) W) + (b @ W + c)       (Gemm transB: W's columns)
A MatMul without a bias Add passes b @ W on as a pending shift (one Add, wherever it ends).

token-linear (a transfer): the scale is constant along the contraction axis (a token-mixing
linear, MLP-Mixer/ResMLP, reading channels-first tokens), so it commutes; the shift goes through
the weight, into the bias Add where there is one (it becomes a (C, T') constant there):
    (s⊙x + b) @ W + c = s⊙(x @ W) + (b @ W + c)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import Affine, broadcasts_within
from unfold.fold.flow import Context, Move, Pending, Rewrite, Stop, quoted

CONSUMER = "consumer-linear"
TOKEN = "token-linear"
OPS = frozenset({"MatMul", "Gemm"})
ALGEBRA = {
    CONSUMER: "(x⊙s + b) @ W + c = x @ (diag(s) W) + (b @ W + c)",
    TOKEN: "(s⊙x + b) @ W + c = s⊙(x @ W) + (b @ W + c) for s constant along the contraction",
}


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
    if value is None or add.inputs[1 - slot] is not out:
        return None
    if not broadcasts_within(value.reshape((1,) * (len(ctx.shape(out) or []) - value.ndim)
                                           + value.shape) if value.ndim <= len(
                                               ctx.shape(out) or []) else value,
                             ctx.shape(out)):
        return None
    return add, slot, value


def _shift_term(shift: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """b @ W for a broadcast b (rank r, last dim 1 or K): rank r, last dim N."""
    k = weight.shape[0]
    full = np.broadcast_to(shift, shift.shape[:-1] + (k,))
    return full @ weight.astype(np.float64)


def _finite(value: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray | Stop:
    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(dtype)
    if not np.all(np.isfinite(cast)):
        return Stop(f"folding would make {what} non-finite in {dtype}")
    return cast


def _max(value: np.ndarray) -> float:
    return float(np.abs(value).max()) if value.size else 0.0


def _matmul(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop | None:
    weight = ctx.constant(node.inputs[1])
    if weight is None:
        return None  # two variables: attention's business
    what = f"MatMul {quoted(node)}"
    if weight.ndim != 2:
        return Stop(f"its weight is not 2-D ({weight.ndim}-D)")
    affine = pending.affine
    assert affine is not None
    rank = affine.rank
    k = weight.shape[0]
    scale = affine.scale_vector(rank - 1, k)
    bias = _bias_add(node, ctx)
    term = _shift_term(affine.shift, weight) if affine.has_shift else None
    if scale is not None:  # varies along the contraction axis only (or not at all)
        if CONSUMER in ctx.skip:
            return Stop(f"rule '{CONSUMER}' is skipped")
        new_weight = None
        if not ctx.dry:
            new_weight = _finite(scale[:, None] * weight.astype(np.float64), weight.dtype,
                                 "the weight")
            if isinstance(new_weight, Stop):
                return new_weight
        return _with_bias(node, pending, ctx, CONSUMER, term, bias, new_weight, weight, "",
                          after=None)
    if affine.scale.shape[-1] == 1:  # constant along the contraction axis
        if TOKEN in ctx.skip:
            return Stop(f"rule '{TOKEN}' is skipped")
        return _with_bias(node, pending, ctx, TOKEN, term, bias, None, weight,
                          f"moved past {what} (a linear over an axis the scale is constant "
                          f"along)", after=Affine(affine.scale, np.zeros(1)))
    return Stop("its scale varies along the contraction axis and along others")


def _with_bias(node: gs.Node, pending: Pending, ctx: Context, rule: str,
               term: np.ndarray | None, bias, new_weight, weight: np.ndarray, event: str,
               after: Affine | None) -> Move | Stop:
    """The shift term b @ W goes into the bias Add when there is one (then `after`, the scale
    left, is on the Add's output), else it is a pending shift on the MatMul's output."""
    out = node.outputs[0]
    outputs: dict[str, Pending] = {}
    new_bias = None
    if bias is not None and (term is not None or (after is not None and after.has_scale)):
        add, slot, c = bias
        total = np.asarray(c, dtype=np.float64) + (term if term is not None else 0.0)
        left = after
        if after is not None and after.has_scale:
            # the scale stays pending after the bias: the bias must be (c + b @ W) ⊘ s so that
            # s⊙(x @ W + bias) = s⊙(x @ W) + (b @ W + c)
            if np.any(np.abs(after.scale) < 1e-12):
                return Stop("the scale is ~0 on some channel: the bias cannot be divided by it")
            total = total / after.scale
        if total.size == c.size:
            total = total.reshape(c.shape)
        if not ctx.dry:
            new_bias = _finite(total, c.dtype, "the bias")
            if isinstance(new_bias, Stop):
                return new_bias
        if left is not None:
            outputs[add.outputs[0].name] = pending.then(left)
        absorbed = (node.name,) if rule == CONSUMER else ()
    else:
        rank = pending.affine.rank  # type: ignore[union-attr]
        left_scale = after.scale if after is not None else np.ones((1,) * rank)
        left = Affine(left_scale, term if term is not None else np.zeros(1))
        if not left.is_identity():
            outputs[out.name] = pending.then(left)
        absorbed = (node.name,) if rule == CONSUMER else ()

    def apply(rw: Rewrite, _: dict[int, Pending]) -> None:
        if new_weight is not None:
            rw.replace_input(node, 1, new_weight, weights=(_max(weight), _max(new_weight)))
        if new_bias is not None:
            add, slot, _c = bias
            rw.replace_input(add, slot, new_bias)

    return Move(rule, event, (0,), outputs, apply=apply, absorbed_by=absorbed)


def _gemm(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop | None:
    weight = ctx.constant(node.inputs[1])
    if weight is None:
        return Stop("its B is not constant")
    if CONSUMER in ctx.skip:
        return Stop(f"rule '{CONSUMER}' is skipped")
    if node.attrs.get("transA", 0):
        return Stop("it transposes its input (transA)")
    affine = pending.affine
    assert affine is not None
    trans_b = bool(node.attrs.get("transB", 0))
    k = weight.shape[1] if trans_b else weight.shape[0]
    scale = affine.scale_vector(1, k)
    shift = affine.shift_vector(1, k)
    if scale is None or shift is None:
        return Stop("its affine varies along more than the contraction axis")
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    c = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if len(node.inputs) > 2 and node.inputs[2].name and c is None:
        return Stop("its C is not constant")
    new_weight = new_c = None
    if not ctx.dry:
        w = weight.astype(np.float64)
        op_b = w.T if trans_b else w
        folded = scale[:, None] * op_b
        term = alpha * (shift @ op_b)
        new_weight = _finite(folded.T if trans_b else folded, weight.dtype, "B")
        if isinstance(new_weight, Stop):
            return new_weight
        if c is not None and beta != 0.0:
            total = np.asarray(c, dtype=np.float64) + term / beta
            new_c = _finite(total.reshape(c.shape) if total.size == c.size else total,
                            c.dtype, "C")
        else:
            new_c = _finite(term, weight.dtype, "C")
        if isinstance(new_c, Stop):
            return new_c

    def apply(rw: Rewrite, _: dict[int, Pending]) -> None:
        assert new_weight is not None and new_c is not None
        rw.replace_input(node, 1, new_weight, weights=(_max(weight), _max(new_weight)))
        if c is not None and beta != 0.0:
            rw.replace_input(node, 2, new_c)
        elif np.any(new_c != 0):
            constant = gs.Constant(rw.names.new(f"{node.name}_C"), new_c)
            if len(node.inputs) > 2:
                node.inputs[2] = constant
            else:
                node.inputs.append(constant)
            node.attrs["beta"] = 1.0

    return Move(CONSUMER, "", (0,), {}, apply=apply,
                absorbed_by=(node.name,))


def plan(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0} or pendings[0].invariant:
        return None
    if node.op == "MatMul":
        return _matmul(node, pendings[0], ctx)
    if node.op == "Gemm":
        return _gemm(node, pendings[0], ctx)
    return None
