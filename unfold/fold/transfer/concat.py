"""Concat: the output's affine is the inputs' affines joined along the concat axis.

    Concat(s1⊙x1 + b1, s2⊙x2 + b2) = Concat(s1, s2)⊙Concat(x1, x2) + Concat(b1, b2)
    a constant part t equals s⊙((t − b)⊘s) + b, so it takes the common affine's preimage

Along a token axis with one common affine (torch.roll's Slice/Slice/Concat, a cls token in front
of normed patches) the result is that same per-channel affine; along the channel axis (four
strided patches side by side) the per-channel constants are joined; an input without a pending
contributes the identity (its size along the axis must then be known).

Backward, every part is asked for the same affine (it must not vary along the concat axis): a
constant part takes it, parts that select from one tensor (torch.roll's two Slices) make one
request of that tensor, and the shift must find a place in all parts or none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, concat_constants
from unfold.fold.backward import Refused, Walk, replace_constant
from unfold.fold.flow import (
    Context,
    Handler,
    Move,
    Pending,
    Replace,
    Rule,
    Stop,
    merged,
    named,
    quoted,
)
from unfold.fold.transfer._common import too_big
from unfold.fold.transfer.select import slice_axes
from unfold.numerics import MIN_ABS_SCALE

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "concat"
RULE = Rule(NAME, "transfer", "Concat(s1⊙x1 + b1, t) = Concat(s1, 1)⊙Concat(x1, t') + "
                             "Concat(b1, 0), t' its preimage")


def _constant_part(tensor: gs.Tensor, ctx: Context) -> tuple[gs.Node | None, np.ndarray] | None:
    """A constant input, or an Expand of one (a cls token broadcast to the batch): (the Expand
    or None, the constant)."""
    value = ctx.constant(tensor)
    if value is not None:
        return None, value
    producer = ctx.producer(tensor)
    if producer is not None and producer.op == "Expand" and len(tensor.outputs) == 1:
        value = ctx.constant(producer.inputs[0])
        if value is not None:
            return producer, value
    return None


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if not pendings:
        return None
    affines = [p.affine for p in pendings.values()]
    rank = affines[0].rank
    axis = int(node.attrs.get("axis", 0)) % rank
    common = affines[0] if all(
        a.scale.shape == affines[0].scale.shape and np.array_equal(a.scale, affines[0].scale)
        and a.shift.shape == affines[0].shift.shape and np.array_equal(a.shift, affines[0].shift)
        for a in affines[1:]) else None
    if common is not None and (common.scale.shape[axis] > 1 or common.shift.shape[axis] > 1):
        common = None  # varies along the concat axis: no one preimage for a constant part
    parts: list[Affine] = []
    sizes: list[int | None] = []
    preimages: list[tuple[int, gs.Node | None, np.ndarray]] = []
    for slot, tensor in enumerate(node.inputs):
        shape = ctx.shape(tensor)
        sizes.append(shape[axis] if shape and isinstance(shape[axis], int) else None)
        if slot in pendings:
            parts.append(pendings[slot].affine)
            continue
        constant = _constant_part(tensor, ctx) if common is not None else None
        if constant is not None and common is not None:
            expand, value = constant
            if np.any(np.abs(common.scale) < MIN_ABS_SCALE) and (common.has_scale
                                                                  or common.has_shift):
                return Stop("the scale is ~0, so its constant input has no exact preimage")
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                preimage64 = (value.astype(np.float64) - common.shift) / common.scale
            if preimage64.size != value.size:
                return Stop("its constant input would be broadcast by the affine")
            preimage = preimage64.reshape(value.shape).astype(value.dtype)
            if not np.all(np.isfinite(preimage)):
                return Stop(f"the preimage of its constant input is not finite in {value.dtype}")
            preimages.append((slot, expand, preimage))
            parts.append(common)
            continue
        parts.append(Affine.identity(rank))
    scale = concat_constants([p.scale for p in parts], axis, sizes)
    shift = concat_constants([p.shift for p in parts], axis, sizes)
    if scale is None or shift is None:
        return Stop("it joins parts of unknown size along an axis the affine varies along")
    joined = Affine(scale, shift)
    big = too_big(joined)
    if big is not None:
        return big

    writes = tuple(Replace(node, slot, value) if expand is None else Replace(expand, 0, value)
                   for slot, expand, value in preimages)
    what = " (its constant input mapped back through the affine)" if preimages else ""
    return Move(NAME, f"moved past Concat {quoted(node)}{what}", tuple(sorted(pendings)),
                {node.outputs[0].name: merged(list(pendings.values()), joined)},
                writes=writes)


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    ctx, rank = walk.ctx, affine.rank
    axis = int(node.attrs.get("axis", 0)) % rank
    if axis in affine.varying_axes():
        raise Refused(f"the affine varies along the axis Concat {quoted(node)} joins")
    groups: dict[int, tuple[gs.Tensor, list[gs.Node]]] = {}
    took = []
    for slot, part in enumerate(node.inputs):
        value = ctx.constant(part)
        if value is not None:
            replace_constant(node, slot, affine, value, walk.plan, shift=want_shift)
            took.append(want_shift)
            continue
        producer = ctx.producer(part)
        if producer is not None and producer.op in ("Slice", "Gather") and \
                ctx.read_only_by(part, [node]) and ctx.constant(producer.inputs[0]) is None:
            data = producer.inputs[0]
            groups.setdefault(id(data), (data, []))[1].append(producer)
            continue
        took.append(walk.into(part, affine, [node], want_shift))
    for data, selections in groups.values():
        for selection in selections:
            if selection.op == "Gather":
                gathered = {int(selection.attrs.get("axis", 0)) % (ctx.rank(data) or rank)}
            else:
                axes = slice_axes(selection, ctx)
                if axes is None:
                    raise Refused(f"the axes of Slice {quoted(selection)} are not known")
                gathered = {a % rank for a in axes}
            if gathered & affine.varying_axes() or (selection.op == "Gather" and
                                                    ctx.rank(data) != rank):
                raise Refused(f"{named(selection)} selects along an axis the affine varies "
                              f"along")
        took.append(walk.into(data, affine, selections, want_shift))
    walk.plan.path.append(f"back through Concat {quoted(node)}")
    if want_shift and affine.has_shift and any(took) and not all(took):
        raise Refused(f"only some parts of Concat {quoted(node)} can take the shift")
    return bool(took) and all(took)


HANDLER = Handler(NAME, frozenset({"Concat"}), (RULE,), prep, back,
                  {"Concat": "every part asked for the same affine (a constant part takes it)"})
