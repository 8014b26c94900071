"""What the handlers share: the one-input pass-through move, the size guard, and
(from flow) reading an op's integer arguments."""

from __future__ import annotations

from typing import TYPE_CHECKING

from unfold.fold.algebra import MAX_CONSTANT_ELEMENTS, Affine
from unfold.fold.flow import Move, Pending, Stop, ints, named
from unfold.fold.graph import undoes

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

# Materializing after a commuting op costs the same ops as before it; after is preferred (it
# keeps layout round trips next to each other, which cleanup then removes, and after a
# selection it touches fewer elements).
DOWNSTREAM_PREFERENCE = 0.01


def too_big(affine: Affine) -> Stop | None:
    if affine.size() > MAX_CONSTANT_ELEMENTS:
        return Stop(f"its affine would need constants of {affine.size()} elements")
    return None


def moved(rule: str, node: gs.Node, pending: Pending, affine: Affine | None, slot: int = 0,
          output: int = 0, what: str = "") -> Move | Stop:
    """`node` commutes: it reads the carrier, its output carries `affine`. When the node undoes
    the layout op that made the pending's source (x.transpose(1, 2) -> BN -> transpose back),
    the carrier is that op's input again: the source follows (RepBN meets x·α there)."""
    if affine is None:
        return Stop(f"{node.op} changes the axes the affine lives on in a way it cannot follow")
    big = too_big(affine)
    if big is not None:
        return big
    source = pending.source
    made = source.inputs[0] if source is not None and len(source.inputs) == 1 else None
    after = pending.then(affine)
    if made is not None and undoes(node, made):
        after.source = made.inputs[0]
    return Move(rule, f"moved past {named(node)}{what}", (slot,),
                {node.outputs[output].name: after}, cost=-DOWNSTREAM_PREFERENCE)


__all__ = ["ints", "moved", "too_big"]
