"""Selection ops: each output element is one input element, so the affine is selected with it.

    Slice(s⊙x + b) = Slice(s)⊙Slice(x) + Slice(b)     (along an axis the affine does not vary
    Gather(s⊙x + b) = Gather(s)⊙Gather(x) + ...         along, every element has the same s, b:
    Split(...)                                          the indices need not even be constant)

The final norm -> Gather of the cls token -> head; a distillation token's two Gathers; Swin's
torch.roll (two Slices, then a Concat).

Backward: a Slice along axes the affine does not vary along asks it of its input; a Gather of
rows of a constant 2-D table takes it into the table (rule 6, the embedding sub-rule):
    A(T[ids]) = (s⊙T + b)[ids]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import (
    Affine,
    FoldRejected,
    fold_into_table,
    gather_constant,
    slice_constant,
)
from unfold.fold.backward import EMBEDDING, EMBEDDING_RULE, Refused, Walk, deep
from unfold.fold.flow import Context, Handler, Move, Pending, Replace, Rule, Stop, named, quoted
from unfold.fold.transfer._common import ints, moved, too_big

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "select"
OPS = frozenset({"Slice", "Gather", "Split"})
RULE = Rule(NAME, "transfer", "Select(s⊙x + b) = Select(s)⊙Select(x) + Select(b)")


def _slice(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop:
    affine = pending.affine
    rank = affine.rank
    steps: list[int] | None
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(node, "", 1, ctx), ints(node, "", 2, ctx)
        steps = ints(node, "", 4, ctx)
        if ints(node, "", 3, ctx) is None or steps is None:
            return Stop("its axes or steps are not constant")
        axes = slice_axes(node, ctx)
        if axes is None:
            return Stop("its axes are not known")
        steps = steps or [1] * len(axes)
        if starts is None or ends is None:
            if affine.varying_axes() & {a % rank for a in axes}:
                return Stop("its starts or ends are not constant, along an axis the affine "
                            "varies along")
            starts, ends = [0] * len(axes), [0] * len(axes)  # unused: the affine is 1 there
    return moved(NAME, node, pending, affine.map(
        lambda v, _: slice_constant(v, starts, ends, axes, steps)))


def _gather(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop:
    affine = pending.affine
    axis = int(node.attrs.get("axis", 0))
    indices = ctx.constant(node.inputs[1])
    index_rank = indices.ndim if indices is not None else ctx.rank(node.inputs[1])
    if index_rank is None:
        return Stop("the rank of its indices is not known")
    if indices is not None and np.any(indices < 0):
        size = (ctx.shape(node.inputs[0]) or [None] * affine.rank)[axis % affine.rank]
        if not isinstance(size, int):
            return Stop("its negative indices count from an unknown end")
        indices = np.where(indices < 0, indices + size, indices)
    return moved(NAME, node, pending, affine.map(
        lambda v, _: gather_constant(v, indices, index_rank, axis)))


def _split(node: gs.Node, pending: Pending, ctx: Context) -> Move | Stop:
    affine = pending.affine
    rank = affine.rank
    axis = int(node.attrs.get("axis", 0)) % rank
    if affine.scale.shape[axis] == 1 and affine.shift.shape[axis] == 1:
        outputs = {out.name: pending.then(affine) for out in node.outputs}
        return Move(NAME, f"moved past Split {quoted(node)}", (0,), outputs)
    sizes = ints(node, "split", 1, ctx)
    if not sizes:
        total = (ctx.shape(node.inputs[0]) or [None] * rank)[axis]
        if not isinstance(total, int) or total % len(node.outputs):
            return Stop("its split sizes are not known")
        sizes = [total // len(node.outputs)] * len(node.outputs)
    bounds = np.cumsum([0, *sizes])
    outputs = {}
    for out, start, end in zip(node.outputs, bounds[:-1], bounds[1:], strict=True):
        part = affine.map(lambda v, _, s=start, e=end: slice_constant(v, [s], [e], [axis], [1]))
        assert part is not None
        big = too_big(part)
        if big is not None:
            return big
        outputs[out.name] = pending.then(part)
    return Move(NAME, f"moved past Split {quoted(node)} (split with it)", (0,), outputs)


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    if node.op == "Slice":
        return _slice(node, pendings[0], ctx)
    if node.op == "Gather":
        return _gather(node, pendings[0], ctx)
    if node.op == "Split":
        return _split(node, pendings[0], ctx)
    return None



def slice_axes(node: gs.Node, ctx: Context) -> list[int] | None:
    """The axes a Slice cuts (None when they are not known)."""
    if "starts" in node.attrs:  # opset < 10
        return list(node.attrs.get("axes", range(len(node.attrs["starts"]))))
    axes = ints(node, "", 3, ctx)
    if axes:
        return axes
    if axes is None:
        return None
    starts = ctx.constant(node.inputs[1])
    count = np.size(starts) if starts is not None else (ctx.shape(node.inputs[1]) or [None])[0]
    return list(range(count)) if isinstance(count, int) else None


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    ctx, what = walk.ctx, named(node)
    if node.op == "Slice":
        axes = slice_axes(node, ctx)
        if axes is None or {a % affine.rank for a in axes} & affine.varying_axes():
            raise Refused(f"{what} cuts along an axis the affine varies along")
        return walk.into(node.inputs[0], affine, [node], want_shift)
    shape = ctx.constant_shape(node.inputs[0]) if node.op == "Gather" else None
    if shape is None:
        raise Refused(f"it comes from {what}, which cannot take a scale")
    return _into_table(node, shape, affine, walk, want_shift)


def _into_table(node: gs.Node, shape: tuple[int, ...], affine: Affine, walk: Walk,
                want_shift: bool) -> bool:
    """Rule 6: the rows of a Gather's constant table take the affine."""
    walk.use(EMBEDDING)
    ctx = walk.ctx
    what = f"Gather {quoted(node)}"
    if int(node.attrs.get("axis", 0)) != 0 or len(shape) != 2:
        raise deep(f"{what} does not look rows up in a 2-D table")
    if len(node.inputs[0].outputs) != 1:
        raise deep(f"the table of {what} is shared with another op (tied): folding would "
                   f"copy it")
    channels = shape[1]
    scale = affine.scale_vector(affine.rank - 1, channels)
    shift = affine.shift_vector(affine.rank - 1, channels)
    if scale is None or shift is None:
        raise deep(f"the affine varies along more than the channels of {what}")
    use_shift = shift if want_shift else np.zeros(channels)
    try:  # (a private copy of the table, changed in place: one table's memory, not three)
        folded = ctx.computed(fold_into_table, (node.inputs[0],), scale, use_shift,
                              private=True)
    except FoldRejected as rejected:
        raise deep(f"the table of {what}: {rejected.reason}") from None

    walk.plan.writes.append(Replace(node, 0, folded.weight, (folded.max_abs_weight_before,
                                                             folded.max_abs_weight_after)))
    walk.plan.absorbed_by.append(node.name)
    walk.plan.path.append(f"folded into the embedding table of {what}")
    return want_shift


HANDLER = Handler(NAME, OPS, (RULE, EMBEDDING_RULE), prep, back, {
    "Slice": "asked of its input (along axes the affine does not vary along)",
    "Gather": "its constant table takes it (rule 6)"})
