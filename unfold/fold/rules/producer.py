"""Rule 2: fold a norm into the linear op that produces it (Swin's patch-embed Conv -> flatten ->
transpose -> patch norm; a MatMul -> norm), through the layout ops between them.

Before:      y = A(L(x ⊛ W + c))        L: Reshape/Flatten/Squeeze/Unsqueeze/Transpose/Identity
After:       y = L(x ⊛ (W·a) + (a⊙c + b))
             scaling W along its output-channel axis: exact for Conv (any padding: the norm
             acts on the Conv's output, where no padding lives), MatMul and Gemm.
Conditions:  every tensor from the producer to the norm has exactly that one reader and is no
             graph output (nothing else may see the scaled values); the norm's channel axis,
             traced back through L, is the producer's channel axis (Conv: axis 1; MatMul and
             Gemm: the last); W is constant; the shift needs somewhere to go: a Conv's or
             Gemm's bias (added if absent) or the bias Add after a MatMul.
Tried first: when it applies the norm is gone without touching any reader, and readers that
rule 1 rewired would otherwise see the scaled values.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import FoldRejected, fold_into_producer
from unfold.fold.graph import (
    LAYOUT_OPS,
    Names,
    bias_add,
    channel_axis_across,
    constant_value,
    rank,
    replace_weight,
    value_readers,
)
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "producer"
ALGEBRA = "A(x ⊛ W + c) = x ⊛ (W·a) + (a⊙c + b), back through layout ops"

def _sole_reader(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    """The one node that reads `tensor`'s values (Shape readers aside: the fold keeps shapes)."""
    readers = value_readers(tensor)
    if tensor.name in graph_outputs or len(readers) != 1:
        return None
    return readers[0]


def _trace_back(site: NormSite, graph_outputs: set[str]) -> tuple[gs.Node, int] | None:
    """(the node that produces the norm's input through layout ops only, the channel axis of
    its output), or None."""
    tensor, reader = site.input, site.nodes[0]
    axis = rank(tensor)
    if axis is None:
        return None
    axis -= 1
    while True:
        if _sole_reader(tensor, graph_outputs) is not reader or len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if node.op not in LAYOUT_OPS:
            return node, axis
        before = channel_axis_across(node, axis, forward=False)
        if before is None:
            return None
        tensor, reader, axis = node.inputs[0], node, before


def _linear(node: gs.Node, axis: int, graph_outputs: set[str]):
    """(linear node, weight's output-channel axis, (bias node, slot) or None, may add a bias) for
    the producer `node` with channel axis `axis`; a reason when it is a linear op that cannot
    take the norm; None when it is no linear op at all."""
    out_rank = rank(node.outputs[0]) or 0
    matmul_bias = None
    if node.op == "Add" and len(node.inputs) == 2:  # MatMul -> Add(bias)
        for data in node.inputs:
            if len(data.inputs) == 1 and data.inputs[0].op == "MatMul":
                found = bias_add(data.inputs[0], graph_outputs)
                if found is not None and found[0] is node:
                    matmul_bias, node = found, data.inputs[0]
                    break
    what = f"its producer {node.op} '{node.name}'"
    if node.op == "Conv":
        if axis != 1:
            return f"{what} has its channels on axis 1, the norm on axis {axis}"
        if constant_value(node.inputs[1]) is None:
            return f"{what} has no constant weight"
        if len(node.inputs) > 2 and constant_value(node.inputs[2]) is None:
            return f"{what} has a non-constant bias"
        return node, 0, (node, 2) if len(node.inputs) > 2 else None, True
    if node.op == "MatMul":
        weight = constant_value(node.inputs[1])
        if weight is None or weight.ndim != 2:
            return f"{what} has no constant 2-D weight"
        if axis != out_rank - 1:
            return f"{what} has its channels on the last axis, the norm on axis {axis}"
        return node, 1, matmul_bias, False
    if node.op == "Gemm":
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0 or \
                constant_value(node.inputs[1]) is None:
            return f"{what} has alpha/beta other than 1 or a non-constant B"
        bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 else None
        if len(node.inputs) > 2 and (bias is None or bias.ndim != 1):
            return f"{what} has a C that is not a constant vector"
        if axis != 1:
            return f"{what} has its channels on axis 1, the norm on axis {axis}"
        return (node, 0 if node.attrs.get("transB", 0) else 1,
                (node, 2) if len(node.inputs) > 2 else None, True)
    return None  # not a linear op (a residual Add, a pooling, ...): nothing to say


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    graph_outputs = {t.name for t in graph.outputs}
    traced = _trace_back(site, graph_outputs)
    if traced is None:
        return Outcome()  # the usual case (a norm on the residual stream): nothing to say
    found = _linear(*traced, graph_outputs)
    if found is None:
        return Outcome()
    if isinstance(found, str):
        report.reasons.append(f"cannot fold into the producer: {found}")
        return Outcome()
    linear, output_axis, bias_slot, can_add_bias = found
    weight = constant_value(linear.inputs[1])
    assert weight is not None  # _linear checked it
    bias = constant_value(bias_slot[0].inputs[bias_slot[1]]) if bias_slot else None
    if bias_slot is None and not can_add_bias and np.any(site.affine.shift != 0):
        report.reasons.append(f"cannot fold into the producer {linear.op} '{linear.name}': "
                              f"it has no bias to take the shift")
        return Outcome()
    try:
        folded = fold_into_producer(site.affine, weight, bias, output_axis)
    except FoldRejected as rejected:
        report.reasons.append(f"cannot fold into the producer {linear.op} '{linear.name}': "
                              f"{rejected.reason}")
        return Outcome()
    replace_weight(linear, 1, folded.weight, names)
    new_bias = gs.Constant(names.new(f"{linear.name}_bias"), folded.bias)
    if bias_slot is not None:
        bias_slot[0].inputs[bias_slot[1]] = new_bias
    elif can_add_bias:
        linear.inputs.append(new_bias)
    site.remove_into_input_maker()
    report.absorbed_by.append(linear.name)
    report.path.append(f"folded into its producer {linear.op} '{linear.name}'")
    report.max_abs_weight_before = max(report.max_abs_weight_before,
                                       folded.max_abs_weight_before)
    report.max_abs_weight_after = max(report.max_abs_weight_after, folded.max_abs_weight_after)
    return Outcome(gone=True)
