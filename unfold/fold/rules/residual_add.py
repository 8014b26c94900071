"""Rule 5: carry a norm along the residual stream of a post-norm model (fairseq, BERT) as a
*pending* affine, past the residual Add, to the next norm (where rule 4 composes them, since
the chain detector sees one chain) or to the linears that read the stream (rule 1).

Before:      y = A(p) + w,       w = x @ W + c   (the sublayer's last linear)
After:       y = A(p + w'),      w' = x @ (W⊘a) + c⊘a
             because a⊙p + b + w = a⊙(p + w⊘a) + b
Conditions:  after rule 1 took the norm's linear readers, the residual Add is its only reader;
             the Add's other operand comes from a MatMul (+ bias Add) or Gemm with constant
             weights that nothing else reads; no channel of a is ~0 (1/a must be finite).
The affine is then one Mul and one Add after the residual Add: the same count as before, one
step further down the stream. Where it finally meets a graph output it stays, materialized.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from unfold.fold.algebra import FoldRejected, divide_producer
from unfold.fold.graph import Names, constant_value, place_affine_after, replace_weight
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "residual-add"
ALGEBRA = "a⊙p + b + w = a⊙(p + w⊘a) + b, dividing w's linear by a"


def _only_reader_is(tensor: gs.Tensor, node: gs.Node, graph_outputs: set[str]) -> bool:
    return tensor.name not in graph_outputs and len(tensor.outputs) == 1 and \
        tensor.outputs[0] is node


def _branch_linear(w: gs.Tensor, add: gs.Node, graph_outputs: set[str]):
    """(linear node, weight slot, bias (node, slot) or None, output axis) producing `w`, or a
    reason why `w` is not such a branch."""
    if not _only_reader_is(w, add, graph_outputs) or len(w.inputs) != 1:
        return f"the other operand '{w.name}' is read elsewhere or has no single producer"
    producer = w.inputs[0]
    bias = None
    if producer.op == "Add":  # MatMul -> Add(bias)
        for i, t in enumerate(producer.inputs):
            value = constant_value(t)
            if value is not None and value.ndim == 1:
                data = producer.inputs[1 - i]
                if len(data.inputs) == 1 and data.inputs[0].op == "MatMul" and \
                        _only_reader_is(data, producer, graph_outputs):
                    bias, producer = (producer, i), data.inputs[0]
                break
    if producer.op == "MatMul":
        weight = constant_value(producer.inputs[1])
        if weight is None or weight.ndim != 2:
            return f"its producer MatMul '{producer.name}' has no constant 2-D weight"
        return producer, 1, bias, 1
    if producer.op == "Gemm":
        if constant_value(producer.inputs[1]) is None or producer.attrs.get("alpha", 1.0) != 1 \
                or producer.attrs.get("beta", 1.0) != 1:
            return f"its producer Gemm '{producer.name}' has a non-constant B or alpha/beta"
        if len(producer.inputs) > 2 and constant_value(producer.inputs[2]) is None:
            return f"its producer Gemm '{producer.name}' has a non-constant C"
        slot = (producer, 2) if len(producer.inputs) > 2 else None
        return producer, 1, slot, 0 if producer.attrs.get("transB", 0) else 1
    return f"the other operand comes from {producer.op} '{producer.name}', not a linear op"


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    graph_outputs = {t.name for t in graph.outputs}
    readers = list(site.output.outputs)
    if len(readers) != 1 or readers[0].op != "Add" or site.output.name in graph_outputs:
        return Outcome()
    (add,) = readers
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return Outcome()
    other = add.inputs[1] if add.inputs[0] is site.output else add.inputs[0]
    if constant_value(other) is not None:
        return Outcome()  # a constant shift is part of a chain, not a residual branch
    found = _branch_linear(other, add, graph_outputs)
    if isinstance(found, str):
        report.reasons.append(f"cannot carry past the residual Add '{add.name}': {found}")
        return Outcome()
    linear, weight_slot, bias_slot, output_axis = found
    weight = constant_value(linear.inputs[weight_slot])
    assert weight is not None  # _branch_linear checked it
    bias = constant_value(bias_slot[0].inputs[bias_slot[1]]) if bias_slot else None
    try:
        divided = divide_producer(site.affine, weight, bias, output_axis)
    except FoldRejected as rejected:
        report.reasons.append(f"cannot carry past the residual Add '{add.name}': "
                              f"{rejected.reason}")
        return Outcome()
    replace_weight(linear, weight_slot, divided.weight, names)
    if bias_slot is not None:
        bias_slot[0].inputs[bias_slot[1]] = gs.Constant(names.new(f"{linear.name}_bias"),
                                                        divided.bias)
    report.max_abs_weight_before = max(report.max_abs_weight_before,
                                       divided.max_abs_weight_before)
    report.max_abs_weight_after = max(report.max_abs_weight_after, divided.max_abs_weight_after)
    add.inputs[0 if add.inputs[0] is site.output else 1] = site.input
    site.nodes[-1].outputs.clear()
    new_nodes = place_affine_after(add, site.affine.scale, site.affine.shift, site.dtype, graph,
                                   names, base=f"{report.name}_after_{add.name}")
    report.path.append(f"carried past the residual Add '{add.name}' (divided '{linear.name}')")
    return Outcome(gone=True, moved_to=new_nodes)
