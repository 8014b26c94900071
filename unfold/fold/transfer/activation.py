"""Positively homogeneous activations: relu(s⊙x) = s⊙relu(x) for s > 0 (a scale with no shift:
a ConvNet's BatchNorm folded into the Conv before it leaves one after a bias-less Conv)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.flow import Context, Handler, Move, Pending, Rule, Stop
from unfold.fold.transfer._common import moved

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "activation"
OPS = frozenset({"Relu", "LeakyRelu", "PRelu"})
RULE = Rule(NAME, "transfer", "relu(s⊙x) = s⊙relu(x) for s > 0 and no shift")


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    affine = pendings[0].affine
    if affine.has_shift:
        return Stop(f"{node.op} does not commute with a shift")
    if np.any(affine.scale <= 0):
        return Stop(f"{node.op} commutes with a positive scale only")
    if node.op == "PRelu":
        slope = ctx.constant(node.inputs[1])
        if slope is None or np.size(slope) != 1:
            return Stop("its slope is not one constant")
    return moved(NAME, node, pendings[0], affine)


HANDLER = Handler(NAME, OPS, (RULE,), prep)
