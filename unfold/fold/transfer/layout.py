"""Layout ops: they move elements without mixing them, so an affine moves with them, its two
constants reshuffled exactly as the data is (algebra's layout functions).

    L(s⊙x + b) = L(s)⊙L(x) + L(b)      Identity, Dropout, Transpose, Reshape, Flatten, Squeeze,
                                        Unsqueeze, Expand (broadcasting repeats each element)

A Reshape that merges the channel axis with a static neighbour (patch merging's 2x2 channel
vectors side by side) tiles the per-channel constants; one that splits it (heads) splits them;
dims the affine does not vary along may be dynamic.

Backward, the affine asked of the output is mapped back to the input (the inverse layout) and
asked of it; an Expand of a constant takes it in that constant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import (
    Affine,
    inverse_permutation,
    reshape_constant,
    squeeze_constant,
    transpose_constant,
    unsqueeze_constant,
)
from unfold.fold.backward import Refused, Walk, replace_constant
from unfold.fold.flow import Context, Handler, Move, Pending, Rule, Stop, named
from unfold.fold.graph import reshape_last_dim
from unfold.fold.transfer._common import ints, moved

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "layout"
OPS = frozenset({"Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze",
                 "Unsqueeze", "Expand"})
RULE = Rule(NAME, "transfer", "L(s⊙x + b) = L(s)⊙L(x) + L(b): the constants reshuffled as the data")


def _reshape_target(node: gs.Node, ctx: Context) -> list | None:
    """The Reshape's output shape: inferred, or from its constant target (0 copies the input
    dim, one -1 takes what is left when that is static)."""
    inferred = ctx.shape(node.outputs[0])
    target = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        if inferred and not isinstance(inferred[-1], int):
            inferred = [*inferred[:-1], reshape_last_dim(node) or inferred[-1]]
        return inferred
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    source = ctx.shape(node.inputs[0]) or []
    out: list = []
    for i, d in enumerate(dims):
        if d == 0 and not node.attrs.get("allowzero", 0):
            out.append(source[i] if i < len(source) else None)
        else:
            out.append(None if d == -1 else d)
    if inferred is not None and len(inferred) == len(out):
        out = [o if o is not None else inf for o, inf in zip(out, inferred, strict=True)]
    if out and not isinstance(out[-1], int):
        out[-1] = reshape_last_dim(node) or out[-1]  # torch's flatten idiom, dynamic batch
    if None in out and out.count(None) == 1 and all(isinstance(d, int) for d in source):
        known = int(np.prod([d for d in out if d is not None]))
        if known:
            out[out.index(None)] = int(np.prod(source)) // known
    return out


def _tiled(before: Affine, after: Affine | None) -> str:
    """ " (k channel vectors side by side)" when a merge tiled a per-channel affine k times."""
    if after is None or not before.rank or not after.rank:
        return ""
    old = max(before.scale.shape[-1], before.shift.shape[-1])
    new = max(after.scale.shape[-1], after.shift.shape[-1])
    if old > 1 and new > old and new % old == 0:
        return f" ({new // old} channel vectors side by side)"
    return ""


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    pending = pendings[0]
    affine = pending.affine
    op = node.op
    if op == "Identity":
        return moved(NAME, node, pending, affine)
    if op == "Dropout":
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return Stop("its mask output is read")
        training = ctx.constant(node.inputs[2]) if len(node.inputs) > 2 and \
            node.inputs[2].name else None
        if training is not None and bool(np.asarray(training).reshape(-1)[0]):
            return Stop("it is in training mode")
        return moved(NAME, node, pending, affine)
    if op == "Transpose":
        rank = affine.rank
        perm = node.attrs.get("perm", list(reversed(range(rank))))
        return moved(NAME, node, pending, affine.map(lambda v, _: transpose_constant(v, perm)))
    if op in ("Reshape", "Flatten"):
        source = ctx.shape(node.inputs[0])
        if op == "Reshape":
            target = _reshape_target(node, ctx)
        else:
            axis = int(node.attrs.get("axis", 1)) % max(affine.rank, 1)
            target = ctx.shape(node.outputs[0])
            if target is None and source is not None:
                head, tail = source[:axis], source[axis:]
                target = [int(np.prod(head)) if all(isinstance(d, int) for d in head)
                          else None,
                          int(np.prod(tail)) if all(isinstance(d, int) for d in tail) else None]
        result = affine.map(lambda v, _: reshape_constant(v, source, target))
        return moved(NAME, node, pending, result, what=_tiled(affine, result))
    if op == "Squeeze":
        axes = ints(node, "axes", 1, ctx)
        if axes is None:
            return Stop("its axes are not constant")
        if not axes:
            shape = ctx.shape(node.inputs[0])
            if shape is None or any(not isinstance(d, int) for d in shape):
                return Stop("it squeezes every size-1 axis of a shape that is not known")
            axes = [a for a, d in enumerate(shape) if d == 1]
        return moved(NAME, node, pending, affine.map(lambda v, _: squeeze_constant(v, axes)))
    if op == "Unsqueeze":
        axes = ints(node, "axes", 1, ctx)
        if not axes:
            return Stop("its axes are not constant")
        return moved(NAME, node, pending, affine.map(lambda v, _: unsqueeze_constant(v, axes)))
    if op == "Expand":
        out_rank = ctx.rank(node.outputs[0])
        if out_rank is None:
            return Stop("the rank of its output is not known")
        grown = out_rank - affine.rank
        return moved(NAME, node, pending, Affine(
            affine.scale.reshape((1,) * grown + affine.scale.shape),
            affine.shift.reshape((1,) * grown + affine.shift.shape)))
    return None


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    """A(L(x)) = L(L⁻¹(A)(x)): the affine mapped back through the op, asked of its input."""
    ctx, op = walk.ctx, node.op
    source = node.inputs[0]
    mapped: Affine | None
    if op == "Expand":
        value = ctx.constant(source)
        if value is None:
            raise Refused(f"{named(node)} expands a variable")
        replace_constant(node, 0, affine, value, walk.plan, shift=want_shift)
        return want_shift and affine.has_shift
    if op in ("Identity", "Dropout"):
        if op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            raise Refused(f"the mask of Dropout '{node.name}' is read")
        mapped = affine
    elif op == "Transpose":
        inverse = inverse_permutation(node.attrs.get("perm", list(reversed(range(affine.rank)))))
        mapped = affine.map(lambda v, _: transpose_constant(v, inverse))
    elif op in ("Reshape", "Flatten"):
        before, after = ctx.shape(source), ctx.shape(node.outputs[0])
        mapped = affine.map(lambda v, _: reshape_constant(v, after, before))
    elif op == "Squeeze":
        axes = ints(node, "axes", 1, ctx)
        shape = ctx.shape(source)
        if not axes and shape is not None and all(isinstance(d, int) for d in shape):
            axes = [a for a, d in enumerate(shape) if d == 1]
        mapped = affine.map(lambda v, _: unsqueeze_constant(v, axes)) if axes else None
    else:  # Unsqueeze
        axes = ints(node, "axes", 1, ctx)
        mapped = affine.map(lambda v, _: squeeze_constant(v, axes)) if axes else None
    if mapped is None:
        raise Refused(f"the affine cannot be followed back through {op} '{node.name}'")
    return walk.into(source, mapped, [node], want_shift)


HANDLER = Handler(NAME, OPS, (RULE,), prep, back, {
    op: "its constant takes it" if op == "Expand" else "mapped back, asked of its input"
    for op in OPS})
