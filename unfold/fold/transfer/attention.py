"""Attention: MatMuls of two variables, and what softmax ignores.

    A @ (s⊙v + b) = s⊙(A @ v) + b      s constant along v's token axis; the shift passes when A's
                                        rows sum to 1 (A = Softmax over its last axis): a value
                                        projection without bias
    q @ (kᵀ + b1ᵀ) = q @ kᵀ + (q b)1ᵀ   a key projection's shift adds a constant per query: an
                                        *invariant* (unknown, constant along the last axis) that
                                        scalar scaling and added masks keep and that a Softmax
                                        over that axis removes; it can never be materialized
    (s⊙q) @ k = s⊙(q @ k)               s constant along q's contraction axis, no shift

The MatMul of two variables is reached through linear's handler (`matmul`). The per-query
constant is a pending of its own kind (`flow.PerQueryConstant`): the dispatcher hands it to
`carry_invariant` alone, whatever the op, and the Softmax that removes it is this module's op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine
from unfold.fold.flow import (
    Carried,
    Context,
    Handler,
    Move,
    Pending,
    PerQueryConstant,
    Rule,
    Stop,
    quoted,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "attention"
RULE = Rule(NAME, "transfer",
            "softmax rows pass a shift of v; a shift of k is a per-query constant softmax drops",
            frozenset({"MatMul", "Softmax"}))

PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast"})
# the minimum of a bias-less query projection (T2T-ViT's qkv_bias=False): its shift b·W_q adds
# (b·W_q)·kᵀ to the logits, which varies along the keys: no softmax drops it, no bias takes it
QUERY_SHIFT = ("a query's shift changes the attention logits key by key, and its bias-less "
               "projection has no bias to take it: one Add stays (the minimum)")


def _rows_sum_to_one(tensor: gs.Tensor, ctx: Context) -> bool:
    """`tensor` is a Softmax over its last axis (through Identity/Dropout/Cast)."""
    for _ in range(4):
        producer = ctx.producer(tensor)
        if producer is None:
            return False
        if producer.op == "Softmax":
            rank = ctx.rank(producer.inputs[0])
            axis = int(producer.attrs.get("axis", -1))
            return rank is not None and axis % rank == rank - 1
        if producer.op not in PASS_THROUGH:
            return False
        tensor = producer.inputs[0]
    return False


def _invariant(node: gs.Node, slot: int, pending: PerQueryConstant, ctx: Context
               ) -> Move | Stop | None:
    axis = pending.axis
    out = node.outputs[0].name
    op = node.op
    keep: dict[str, Carried] = {out: pending.moved()}
    if op == "Softmax":
        rank = ctx.rank(node.inputs[0])
        if rank is None or int(node.attrs.get("axis", -1)) % rank != axis:
            return Stop("a softmax over another axis does not remove the per-query constant")
        return Move(NAME, f"the key's shift vanished in Softmax {quoted(node)}", (0,), {})
    if op in PASS_THROUGH and slot == 0:
        return Move(NAME, f"moved past {op} '{node.name}'", (0,), keep)
    if op in ("Add", "Sub") and len(node.inputs) == 2 and node.inputs[0] is not node.inputs[1]:
        return Move(NAME, f"moved past {op} '{node.name}' (a per-query constant stays one)",
                    (slot,), keep)
    if op in ("Mul", "Div") and len(node.inputs) == 2:
        k = ctx.constant(node.inputs[1 - slot])
        if k is None or (op == "Div" and slot == 1):
            return Stop(f"{op} by a variable")
        k = np.asarray(k)
        rank = ctx.rank(node.inputs[slot])
        if rank is None or k.ndim > rank:
            return Stop(f"{op} by a constant of unknown alignment")
        if k.reshape((1,) * (rank - k.ndim) + k.shape).shape[axis] != 1:
            return Stop(f"{op} by a constant that varies along the softmax axis")
        return Move(NAME, f"moved past {op} '{node.name}' (a per-query constant stays one)",
                    (slot,), keep)
    return None


def carry_invariant(node: gs.Node, pendings: Mapping[int, Carried], ctx: Context) -> Move | Stop:
    """Where a per-query constant reaches `node`, whatever its op (the dispatcher hands it
    here alone)."""
    constants = {slot: p for slot, p in pendings.items() if isinstance(p, PerQueryConstant)}
    if len(pendings) != 1 or len(constants) != 1:
        return Stop("two unknown per-query constants meet" if len(constants) > 1 else
                    "a per-query constant meets a pending affine")
    ((slot, pending),) = constants.items()
    found = _invariant(node, slot, pending, ctx)
    return found if found is not None else Stop(
        f"{node.op} would need the per-query constant a key's shift adds, which is unknown")


def matmul(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    """A MatMul of two variables with a pending affine on one operand."""
    if len(pendings) != 1:
        return None
    (slot,) = pendings
    pending = pendings[slot]
    affine = pending.affine
    out = node.outputs[0]
    out_rank = ctx.rank(out)
    if out_rank is None or out_rank != affine.rank:
        return Stop("the ranks of its operands differ")
    if slot == 1:
        if affine.scale.shape[-2] == 1 and (not affine.has_shift or (
                affine.shift.shape[-2] == 1 and _rows_sum_to_one(node.inputs[0], ctx))):
            return Move(NAME, f"moved past MatMul {quoted(node)} (attention rows sum to 1)", (1,),
                        {out.name: pending.then(affine)})
        if not affine.has_scale and affine.shift.shape[-1] == 1:
            return Move(NAME, f"key shift carried into MatMul {quoted(node)} as a per-query "
                              f"constant", (1,), {out.name: pending.per_query(out_rank - 1)})
        return Stop("the affine on its right operand neither passes attention rows nor is a "
                    "key's pure shift")
    if affine.scale.shape[-1] == 1 and not affine.has_shift:
        return Move(NAME, f"scale moved past MatMul {quoted(node)}", (0,),
                    {out.name: pending.then(Affine(affine.scale, np.zeros(1)))})
    if affine.has_shift and not affine.has_scale:
        return Stop(QUERY_SHIFT)
    return Stop("it multiplies the affine's tensor by another variable")


# only the per-query constant has anything to do with it (carry_invariant)
HANDLER = Handler(NAME, frozenset({"Softmax"}), (RULE,))
