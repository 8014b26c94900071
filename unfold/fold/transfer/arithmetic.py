"""Add, Sub, Mul, Div: elementwise arithmetic, one handler. Which sub-rule applies is decided by
the operands, and each sub-rule's algebra is in its own module:

    one constant operand          constant-op (constant_op.py): the constant takes what it can
    Add/Sub of two variables      residual-add (residual.py): the residual stream, affines that
                                  meet, a branch divided by the stream's scale (rule 5)
    Mul/Div of two variables      gate (gate.py): a scale passes a product with a variable

Backward (an affine asked of the op's output):

    A(u ± c) = s⊙u ± (s⊙c ± b)     a constant operand takes the shift, the data the scale
    A(u + v) = s⊙u + (s⊙v + b)      two variables: both the scale, one of them the shift (an
                                    embedding sum: the token table)
    A(x⊙k) = x⊙(s⊙k) + b           a constant Mul takes the scale (the shift stays for the caller)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine
from unfold.fold.backward import Refused, Walk, replace_constant
from unfold.fold.flow import Context, Handler, Move, Pending, Stop, named
from unfold.fold.graph import constant_operand
from unfold.fold.transfer import constant_op, gate, residual

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "arithmetic"
OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if len(node.inputs) != 2 or len(pendings) > 2:
        return None
    operand = constant_operand(node)
    if operand is not None:
        return constant_op.prep(node, pendings, operand, ctx)
    if node.op in ("Add", "Sub"):
        return residual.prep(node, pendings, ctx)
    return gate.prep(node, pendings, ctx)


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    if len(node.inputs) != 2 or node.op == "Div":
        raise Refused(f"it comes from {named(node)}, which cannot take a scale")
    if node.op == "Mul":
        return _through_mul(node, affine, walk)
    return _through_add(node, affine, walk, want_shift)


def _through_mul(node: gs.Node, affine: Affine, walk: Walk) -> bool:
    operand = constant_operand(node)
    if operand is None:
        raise Refused(f"{named(node)} multiplies two variables")
    slot, k = operand  # A(x⊙k) = x⊙(s⊙k) + b: the constant takes the scale only
    replace_constant(node, slot, Affine(affine.scale, np.zeros(1)), k, walk.plan, shift=False,
                     bound=walk.ctx.shape(node.outputs[0]))
    walk.plan.path.append(f"into the constant of {named(node)}")
    return False


def _through_add(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    """A(u ± c) with c constant: c takes the shift; A(u + v): u and v both take the scale,
    one of them the shift (an embedding sum: the token table)."""
    ctx = walk.ctx
    sign = -1.0 if node.op == "Sub" else 1.0
    scale_only = Affine(affine.scale, np.zeros(1))
    operand = constant_operand(node)
    if operand is not None:
        slot, c = operand
        data = node.inputs[1 - slot]
        # A(x + c) = s⊙x + (s⊙c + b); A(x − c) = s⊙x − (s⊙c − b); A(c − x) = (s⊙c + b) − s⊙x
        const_affine = Affine(affine.scale, affine.shift * (sign if slot == 1 else 1.0))
        replace_constant(node, slot, const_affine, c, walk.plan, shift=want_shift,
                         bound=ctx.shape(node.outputs[0]))
        walk.into(data, scale_only, [node], False)
        walk.plan.path.append(f"its shift into the constant of {named(node)}")
        return want_shift and affine.has_shift
    if node.inputs[0] is node.inputs[1]:
        raise Refused(f"{named(node)} reads one tensor twice")
    if not want_shift or not affine.has_shift:
        for slot in (0, 1):
            walk.into(node.inputs[slot], scale_only, [node], False)
        return False
    # one part takes the shift: try the first, then the second
    first_error = None
    for shifted in (0, 1):
        trial = walk.trial()
        try:
            signed = Affine(affine.scale, affine.shift * (sign if shifted == 1 else 1.0))
            if not trial.into(node.inputs[shifted], signed, [node], True):
                continue
            trial.into(node.inputs[1 - shifted], scale_only, [node], False)
        except Refused as refused:
            first_error = first_error or refused.reason
            continue
        walk.adopt(trial)
        return True
    if first_error is not None:
        raise Refused(first_error)
    for slot in (0, 1):  # neither can take the shift: the scale only
        walk.into(node.inputs[slot], scale_only, [node], False)
    return False


HANDLER = Handler(NAME, OPS, (constant_op.RULE, residual.RULE, gate.RULE), prep, back, {
    "Add": "a constant operand takes the shift; of two variables, both the scale, one the shift",
    "Sub": "a constant operand takes the shift; of two variables, both the scale, one the shift",
    "Mul": "its constant operand takes the scale"})
