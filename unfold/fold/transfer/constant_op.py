"""An elementwise op with a constant operand that is not a norm (a bias, attention's 1/√d, an
embedding scale, DyT's α): it stays where it is, and its constant takes what it can of the
affine, so the op does the work a materialized Mul or Add would:

    (s⊙x + b)⊙k = x⊙(s⊙k) + b⊙k            a Mul takes the scale (a Div likewise: x/(k⊘s))
    (s⊙x + b) + c = s⊙(x + (b + c)⊘s)       an Add takes the shift (divided by the scale that
    (s⊙x + b) − c = s⊙(x − (c − b)⊘s)        stays pending; with no scale left: x + (b + c))
    c − (s⊙x + b) = s⊙((c − b)⊘s − x)

(Norms, LayerScale and other per-channel chains are sites: the driver composes those into the
pending and deletes them, rule 4.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, broadcasts_within
from unfold.fold.flow import Context, Move, Pending, Replace, Rule, Stop, named
from unfold.fold.transfer._common import too_big
from unfold.numerics import MIN_ABS_SCALE

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "constant-op"
RULE = Rule(NAME, "transfer",
            "(s⊙x + b)⊙k = x⊙(s⊙k) + b⊙k; (s⊙x + b) + c = s⊙(x + (b + "
            "c)⊘s): the constant takes it")



def prep(node: gs.Node, pendings: dict[int, Pending], operand: tuple[int, np.ndarray],
         ctx: Context) -> Move | Stop | None:
    """This sub-rule's part of arithmetic's handler (Add, Sub, Mul, Div): `operand` is the
    slot and value of the node's constant operand."""
    (slot,) = pendings
    pending = pendings[slot]
    constant = operand[1]
    affine = pending.affine
    rank = affine.rank
    c = np.asarray(constant, dtype=np.float64)
    if c.ndim > rank:
        return Stop("its constant has more axes than the data")
    c = c.reshape((1,) * (rank - c.ndim) + c.shape)
    shape = ctx.shape(node.inputs[slot])
    if not broadcasts_within(c, shape):
        return Stop("its constant would broadcast the data to a larger shape")
    s, b = affine.scale, affine.shift
    op = node.op
    if op == "Div" and slot == 1:
        return Stop("c / x is not affine in x")
    if op in ("Mul", "Div"):
        if op == "Div" and np.any(c == 0):
            return Stop("it divides by zero")
        if op == "Div" and np.any(np.abs(s) < MIN_ABS_SCALE):
            return Stop("the scale is ~0 on some channel: it cannot go into the divisor")
        new_constant = s * c if op == "Mul" else c / s
        left = Affine(np.ones((1,) * rank), b * c if op == "Mul" else b / c)
        what = "its constant took the scale"
    else:
        if affine.has_scale and np.any(np.abs(s) < MIN_ABS_SCALE):
            return Stop("the scale is ~0 on some channel: the shift cannot go into the constant")
        if op == "Add":
            new_constant = (b + c) / s
        else:  # x − c and c − x both become s⊙(±x ∓ (c − b)⊘s)
            new_constant = (c - b) / s
        left = Affine(s, np.zeros((1,) * rank))
        what = "its constant took the shift"
    if not broadcasts_within(new_constant, shape):
        return Stop("the affine would broadcast its constant to a larger shape")
    big = too_big(Affine(new_constant, np.zeros(1)))
    if big is not None:
        return big
    dtype = np.asarray(constant).dtype
    value = new_constant.reshape(constant.shape) if new_constant.size == np.size(constant) \
        else new_constant

    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(dtype)
    if not np.all(np.isfinite(cast)):
        return Stop(f"its constant would not be finite in {dtype}")
    outputs = {} if left.is_identity() else {node.outputs[0].name: pending.then(left)}
    return Move(NAME, f"moved past {named(node)} ({what})", (slot,), outputs,
                writes=(Replace(node, 1 - slot, cast),))
