"""Pooling over axes the affine is constant along: averaging commutes with it (the weights sum
to one), summing scales the shift by the count, max pooling commutes when the scale is
positive (a monotone map per channel). Token pooling, global average pooling, a channels-first
head's ReduceMean.

    mean(s⊙x + b) = s⊙mean(x) + b       max(s⊙x + b) = s⊙max(x) + b   (s > 0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, reduce_mean_constant
from unfold.fold.flow import Context, Handler, Move, Pending, Rule, Stop
from unfold.fold.transfer._common import ints, moved

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "pool"
OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool",
                 "AveragePool", "MaxPool"})
RULE = Rule(NAME, "transfer",
            "mean(s⊙x + b) = s⊙mean(x) + b over axes s does not vary along "
            "(max: s > 0)")


def _reduced_axes(node: gs.Node, rank: int, ctx: Context) -> list[int] | None:
    if node.op.startswith("Global") or node.op in ("AveragePool", "MaxPool"):
        return list(range(2, rank))
    axes = ints(node, "axes", 1, ctx)
    if axes is None:
        return None
    if not axes:
        return [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({a % rank for a in axes})


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    pending = pendings[0]
    affine = pending.affine
    rank = affine.rank
    axes = _reduced_axes(node, rank, ctx)
    if axes is None:
        return Stop("its axes are not constant")
    if not axes:
        return moved(NAME, node, pending, affine)
    if {a for a in axes if affine.scale.shape[a] > 1}:
        return Stop("it mixes values the scale treats differently (the scale varies along a "
                    "reduced axis)")
    is_max = node.op in ("ReduceMax", "GlobalMaxPool", "MaxPool")
    if is_max and np.any(affine.scale <= 0):
        return Stop("max pooling commutes with a positive scale only")
    keepdims = node.op not in ("ReduceMean", "ReduceSum", "ReduceMax") or \
        bool(node.attrs.get("keepdims", 1))
    windowed = node.op in ("AveragePool", "MaxPool")
    if windowed:
        if {a for a in axes if affine.shift.shape[a] > 1}:
            return Stop("the shift varies over the pooled positions")
        pads_used = any(int(p) for p in node.attrs.get("pads", [])) or \
            node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID")
        if node.op == "AveragePool" and pads_used and node.attrs.get("count_include_pad", 0) \
                and affine.has_shift:
            return Stop("it averages its zero padding in, which the shift does not cover")
        return moved(NAME, node, pending, affine)
    if is_max and {a for a in axes if affine.shift.shape[a] > 1}:
        return Stop("the shift varies along the axis it takes the max over")
    scale = reduce_mean_constant(affine.scale, axes, keepdims)
    shift = reduce_mean_constant(affine.shift, axes, keepdims)
    if node.op == "ReduceSum" and affine.has_shift:  # (a pure scale needs no count)
        shape = ctx.shape(node.inputs[0])
        counts = [shape[a] if shape else None for a in axes]
        known = [c for c in counts if isinstance(c, int)]
        if len(known) != len(counts):
            return Stop("it sums over axes of unknown size (the shift grows with the count)")
        shift = shift * float(np.prod(known))
    return moved(NAME, node, pending, Affine(scale, shift))


HANDLER = Handler(NAME, OPS, (RULE,), prep)
