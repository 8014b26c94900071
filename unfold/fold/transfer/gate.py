"""A product with a variable (a gate, SwiGLU's x·σ(g), a mask multiply) commutes with a scale,
not with a shift:   (s⊙x)⊙g = s⊙(x⊙g),   (s⊙x)/g = s⊙(x/g)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, broadcasts_within
from unfold.fold.flow import Context, Move, Pending, Rule, Stop, named

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "gate"
RULE = Rule(NAME, "transfer",
            "(s⊙x)⊙g = s⊙(x⊙g): a scale passes a product with a variable, "
            "a shift does not",
            frozenset({"Mul", "Div"}))


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    """This sub-rule's part of arithmetic's handler: a Mul or Div of two variables."""
    if len(pendings) != 1:
        return None
    (slot,) = pendings
    pending = pendings[slot]
    if node.inputs[0] is node.inputs[1]:
        return Stop("it multiplies the tensor by itself")
    affine = pending.affine
    if node.op == "Div" and slot == 1:
        return Stop("g / x is not affine in x")
    if affine.has_shift:
        return Stop(f"a shift does not commute with a product of two variables ({node.op})")
    out_shape = ctx.shape(node.outputs[0])
    rank = len(out_shape) if out_shape is not None else None
    if rank is None or rank < affine.rank:
        return Stop("the rank of its output is not known")
    scale = affine.scale.reshape((1,) * (rank - affine.rank) + affine.scale.shape)
    if not broadcasts_within(scale, out_shape):
        return Stop("the scale does not line up with its output")
    return Move(NAME, f"scale moved past {named(node)}", (slot,),
                {node.outputs[0].name: pending.then(Affine(scale, np.zeros((1,) * rank)))})
