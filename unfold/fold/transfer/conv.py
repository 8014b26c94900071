"""consumer-conv (a sink, rule 7): a Conv reading the pending, per channel on its input's axis 1
(tokens reshaped to channels-first, a BatchNorm or channels-first UN before a Conv).

    Conv(W, s⊙x + b) + c = Conv(W·s, x) + (c + Σ W b)     when it pads nothing
    Conv(W, pad0(s⊙x + b)) = Conv(W·s, pad0(x + b⊘s))     when it pads: only the exact part
                                                          folds; an Add of b⊘s stays before it
W·s scales each input channel (per group); exact at the padding because s⊙0 = 0.

Backward, as the producer of a tensor an affine is asked of (rule 2, backward.into_producer):
    A(Conv(W, x) + c) = Conv(W·s, x) + (s⊙c + b)          W scaled per output channel (exact
                                                          for any padding: A acts on the output)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, FoldRejected, fold_into_conv_consumer
from unfold.fold.backward import (
    PRODUCER,
    PRODUCER_RULE,
    ProducerLayout,
    Walk,
    deep,
    into_producer,
)
from unfold.fold.flow import (
    Before,
    Context,
    Fill,
    Handler,
    Move,
    Pending,
    Replace,
    Rule,
    Stop,
    Write,
    named,
    quoted,
)
from unfold.numerics import MIN_ABS_SCALE

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "consumer-conv"
RULE = Rule(NAME, "sink", "Conv(W, s⊙x + b) = Conv(W·s, x) + ΣW b; with padding, only W·s (b⊘s "
                         "stays)")


def pads_nothing(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return True
    if auto_pad != "NOTSET":
        return False
    return not any(int(p) for p in conv.attrs.get("pads", []))


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    if set(pendings) != {0}:
        return None
    pending = pendings[0]
    affine = pending.affine
    weight = ctx.constant_shape(node.inputs[1])  # (its values: ctx.computed, once)
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2].name)
    if weight is None or (has_bias and ctx.constant_shape(node.inputs[2]) is None):
        return Stop("its weight or bias is not constant")
    group = int(node.attrs.get("group", 1))
    channels = weight[1] * group
    scale = affine.scale_vector(1, channels)
    shift = affine.shift_vector(1, channels)
    if scale is None:
        return Stop("the scale is not per channel on its input's axis 1")
    zero_padding = pads_nothing(node)
    # the shift goes into the bias where it is per channel and the Conv pads nothing; else
    # (a padded Conv, or a shift that varies over positions: an explicit zero Pad before it)
    # only the scale folds and an Add of b⊘s stays before the Conv
    into_bias = shift is not None and zero_padding
    if affine.has_shift and not into_bias and not affine.has_scale:
        return Stop("it pads its input (or the shift varies over positions): a shift cannot "
                    "go into its bias")
    if affine.has_shift and not into_bias and np.any(np.abs(scale) < MIN_ABS_SCALE):
        return Stop("the shift stays before it and the scale is ~0 on some channel: the shift "
                    "cannot move past the scale exactly")
    into = shift if into_bias and shift is not None else np.zeros(channels)
    try:
        folded = ctx.computed(fold_into_conv_consumer,
                              (node.inputs[1], node.inputs[2] if has_bias else None),
                              scale, into, group=group)
    except FoldRejected as rejected:
        return Stop(rejected.reason)
    leaves = None
    if affine.has_shift and not into_bias:
        why = "pads its input" if not zero_padding else "reads a shift that varies over positions"
        leaves = (f"reader Conv '{node.name}' {why}: the shift stays as an Add of b/a before it "
                  f"(in its bias it would be wrong at the borders)")
    stays = Affine.shift_only(affine.shift / affine.scale) if leaves else None

    writes: list[Write] = [Replace(node, 1, folded.weight, (folded.max_abs_weight_before,
                                                            folded.max_abs_weight_after))]
    if has_bias:
        writes.append(Replace(node, 2, folded.bias))
    elif into_bias and affine.has_shift:
        writes.append(Fill(node, 2, folded.bias, f"{node.name}_bias"))
    if stays is not None:
        writes.append(Before(node, 0, stays, f"{node.name}_shift_in"))

    event = f"folded into its reader Conv {quoted(node)}" if leaves is None else \
        f"scale folded into its reader Conv {quoted(node)}"
    return Move(NAME, event, (0,), {}, cost=1.0 if leaves else 0.0, writes=tuple(writes),
                absorbed_by=(node.name,), leaves=leaves)


def back(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool) -> bool:
    """Rule 2 into a producer Conv: its output channels are on axis 1, its weight's axis 0."""
    walk.use(PRODUCER)
    ctx, what = walk.ctx, named(node)
    weight_shape = ctx.constant_shape(node.inputs[1])  # (its values: into_producer, once)
    if weight_shape is None:
        raise deep(f"its producer {what} has no constant weight")
    has_bias_slot = len(node.inputs) > 2
    if has_bias_slot and ctx.constant_shape(node.inputs[2]) is None:
        raise deep(f"its producer {what} has a non-constant bias")
    layout = ProducerLayout(1, 0, weight_shape[0], has_bias_slot, True)
    return into_producer(node, affine, walk, want_shift, layout)


HANDLER = Handler("conv", frozenset({"Conv"}), (RULE, PRODUCER_RULE), prep, back,
                  {"Conv": "its weight's output channels take the scale, its bias the shift "
                           "(rule 2)"})
