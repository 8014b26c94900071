"""A negation is linear: −(s⊙x + b) = s⊙(−x) + (−b). Rotary embeddings' rotate_half
(cat(−x2, x1)) negates half of q and k; the pending passes with its shift negated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unfold.fold.algebra import Affine
from unfold.fold.flow import Context, Handler, Move, Pending, Rule, Stop
from unfold.fold.transfer._common import moved

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "negate"
OPS = frozenset({"Neg"})
RULE = Rule(NAME, "transfer", "−(s⊙x + b) = s⊙(−x) − b")


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    affine = pendings[0].affine
    return moved(NAME, node, pendings[0], Affine(affine.scale, -affine.shift))


HANDLER = Handler(NAME, OPS, (RULE,), prep)
