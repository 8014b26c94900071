"""Pad. All-zero pads (Swin's window padding when the size divides) change nothing. Zero-valued
constant padding keeps the scale exact (s⊙0 = 0); the shift is padded with zeros, so it becomes
a constant over the padded axes (exact; a linear later takes it as a full bias, or it stays).
Reflect, edge and wrap padding copy elements: exact where the affine is constant along the
padded axes.

    Pad0(s⊙x + b) = s⊙Pad0(x) + Pad0(b)

Backward, only a Pad that pads nothing passes an affine back (its zeros would not take it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, pad_constant
from unfold.fold.backward import Refused, Walk
from unfold.fold.flow import Context, Handler, Move, Pending, Rule, Stop, quoted
from unfold.fold.transfer._common import ints, moved

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "pad"
RULE = Rule(NAME, "transfer", "Pad0(s⊙x + b) = s⊙Pad0(x) + Pad0(b); zero pads: nothing changes")


def pads_of(node: gs.Node, rank: int, ctx: Context) -> list[int] | None:
    pads = ints(node, "pads", 1, ctx)
    if pads is None:
        return None
    axes = ints(node, "", 3, ctx) if len(node.inputs) > 3 and node.inputs[3].name else None
    if axes:
        full = [0] * (2 * rank)
        for k, axis in enumerate(axes):
            full[axis % rank] = pads[k]
            full[axis % rank + rank] = pads[k + len(axes)]
        return full
    return pads if len(pads) == 2 * rank else None


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    pending = pendings[0]
    affine = pending.affine
    rank = affine.rank
    pads = pads_of(node, rank, ctx)
    if pads is None:
        return Stop("its pads are not constant")
    if not any(pads):
        return moved(NAME, node, pending, affine, what=" (its pads are all zero)")
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    padded = {a for a in range(rank) if pads[a] or pads[a + rank]}
    if mode != "constant":
        if affine.varying_axes() & padded:
            return Stop(f"{mode} padding copies border elements along an axis the affine "
                        f"varies along")
        return moved(NAME, node, pending, affine)
    value = 0.0
    if "value" in node.attrs:
        value = float(node.attrs["value"])
    elif len(node.inputs) > 2 and node.inputs[2].name:
        constant = ctx.constant(node.inputs[2])
        if constant is None:
            return Stop("its padding value is not constant")
        value = float(np.asarray(constant).reshape(-1)[0]) if np.size(constant) else 0.0
    if value != 0.0:
        return Stop(f"it pads with {value}, not 0")
    if affine.scale.ndim and {a for a in range(rank) if affine.scale.shape[a] > 1} & padded:
        return Stop("the scale varies along a padded axis")
    shift = pad_constant(affine.shift, pads, ctx.shape(node.inputs[0]) or [None] * rank,
                         0.0) if affine.has_shift else affine.shift
    if shift is None:
        return Stop("its padded axes are not static, and the shift would have to be written "
                    "out over them")
    return moved(NAME, node, pending, Affine(affine.scale, shift),
                 what=" (the shift is zero at the padding)")


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    pads = pads_of(node, affine.rank, walk.ctx)
    if pads is None or any(pads):
        raise Refused(f"Pad {quoted(node)} pads (its zeros would not take the affine)")
    return walk.into(node.inputs[0], affine, [node], want_shift)


HANDLER = Handler(NAME, frozenset({"Pad"}), (RULE,), prep, back,
                  {"Pad": "asked of its input where it pads nothing"})
