"""Rule 7: fold a norm into a Conv that reads it (a convolutional FFN, a conv head: tokens
(B, N, C) -> transpose/reshape to (B, C, H, W) -> Conv), forward through the layout ops.

Before:      y = Conv(W, pad0(L(a⊙x + b)) ) + c                L: Transpose/Reshape/...
After:       y = Conv(W·a, pad0(L(x))) + (c + Σ W b)           when the Conv pads nothing
             y = Conv(W·a, pad0(L(x) + b⊘a)) + c               when it pads: only the exact
             part folds; an Add of b⊘a stays before the Conv (its padding is zero, not -b/a)
             W·a scales each input channel (per group); exact because a⊙0 = 0 at the padding.
Conditions:  every tensor from the norm to the Conv has exactly that one reader and is no graph
             output; the norm's channel axis, followed through L, is the Conv input's axis 1;
             W (and c) constant; a padding Conv needs every |a| > 1e-12 for b⊘a.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import FoldRejected, fold_into_conv_consumer
from unfold.fold.graph import (
    LAYOUT_OPS,
    Names,
    channel_axis_across,
    constant_value,
    replace_weight,
    value_readers,
)
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "consumer-conv"
ALGEBRA = "Conv(W, a⊙x + b) = Conv(W·a, x) + ΣW b; with padding, only W·a (b⊘a stays)"

def _trace_forward(site: NormSite, graph_outputs: set[str]) -> tuple[gs.Node, gs.Tensor] | None:
    """(the Conv that reads the norm through layout ops only with the norm's channels on its
    input's axis 1, the tensor it reads), or None."""
    tensor = site.output
    shape = getattr(tensor, "shape", None)
    if shape is None:
        return None
    axis = len(shape) - 1
    while True:
        readers = value_readers(tensor)  # Shape readers see the same shape after the fold
        if tensor.name in graph_outputs or len(readers) != 1:
            return None
        node = readers[0]
        if node.inputs[0] is not tensor or any(t is tensor for t in node.inputs[1:]):
            return None
        if node.op == "Conv":
            return (node, tensor) if axis == 1 else None
        if node.op not in LAYOUT_OPS:
            return None
        moved = channel_axis_across(node, axis, forward=True)
        if moved is None:
            return None
        tensor, axis = node.outputs[0], moved


def _pads_nothing(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return True
    if auto_pad != "NOTSET":
        return False
    return not any(int(p) for p in conv.attrs.get("pads", []))


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    found = _trace_forward(site, {t.name for t in graph.outputs})
    if found is None:
        return Outcome()
    conv, conv_input = found
    weight = constant_value(conv.inputs[1])
    bias = constant_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
    what = f"reader Conv '{conv.name}'"
    if weight is None or (len(conv.inputs) > 2 and bias is None):
        report.reasons.append(f"{what} has a non-constant weight or bias")
        return Outcome()
    zero_padding = _pads_nothing(conv)
    try:
        folded = fold_into_conv_consumer(site.affine, weight, bias, zero_padding,
                                         group=int(conv.attrs.get("group", 1)))
    except FoldRejected as rejected:
        report.reasons.append(f"{what}: {rejected.reason}")
        return Outcome()
    replace_weight(conv, 1, folded.weight, names)
    if zero_padding or bias is not None:
        new_bias = gs.Constant(names.new(f"{conv.name}_bias"), folded.bias)
        if len(conv.inputs) > 2:
            conv.inputs[2] = new_bias
        else:
            conv.inputs.append(new_bias)
    first = value_readers(site.output)[0]
    first.inputs[0] = site.input
    site.nodes[-1].outputs.clear()
    report.absorbed_by.append(conv.name)
    if folded.input_shift is None:
        report.path.append(f"folded into its reader Conv '{conv.name}'")
        return Outcome(gone=True)
    # the exact part only: x + b⊘a, on the Conv input's channel axis, stays before the Conv
    spatial = len(getattr(conv_input, "shape", None) or []) - 2
    shift = folded.input_shift.reshape(-1, *([1] * spatial))
    shifted = gs.Variable(names.new(conv_input.name), dtype=conv_input.dtype,
                          shape=conv_input.shape)
    graph.nodes.append(gs.Node("Add", names.new(f"{report.name}_before_{conv.name}"),
                               inputs=[conv_input, gs.Constant(
                                   names.new(f"{report.name}_shift"), np.asarray(shift))],
                               outputs=[shifted]))
    conv.inputs[0] = shifted
    report.path.append(f"scale folded into its reader Conv '{conv.name}'")
    return Outcome(gone=True, left=f"{what} pads its input: the shift stays as an Add of b/a "
                                   f"before it (in its bias it would be wrong at the borders)")
