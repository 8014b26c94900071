"""Rule 1: fold a norm into the linear ops that read it (pre-norm blocks: q/k/v, fc1, head).

Before:      y = (x⊙a + b) @ W + c            (MatMul, then Add(c) if present; or Gemm)
After:       y = x @ (a[:,None]·W) + (b @ W + c)
Gemm transB: W' = W·a on B's columns, c' = W b + c
Conditions:  W constant, 2-D; the norm's output is the op's first input; Gemm with alpha =
             beta = 1 and transA = 0. Every reader gets its own copy of the weights (q, k and v
             each); a reader that cannot absorb keeps the norm, for that reader only.
A MatMul without a bias Add leaves b @ W as an Add of its own after it: a *pending shift*,
which the driver hands on (rules 3, 5) like any moved affine; where it stays, it is that
MatMul's bias (the no-norm twin's MatMul has none: one Add more).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import FoldedLinear, FoldRejected, fold_into_gemm, fold_into_matmul
from unfold.fold.graph import (
    Names,
    bias_add,
    constant_value,
    place_affine_after,
    replace_weight,
)
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "consumer-linear"
ALGEBRA = "(x⊙a + b) @ W + c = x @ (diag(a) W) + (b W + c)"


def _why_not(node: gs.Node, site: NormSite) -> str | None:
    what = f"reader {node.op} '{node.name}'"
    if node.op not in ("MatMul", "Gemm"):
        return f"{what} is not a MatMul or Gemm"
    if node.inputs[0] is not site.output:
        return f"{what} reads the norm as its weight operand, not its input"
    weight = constant_value(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return f"{what} has no constant 2-D weight"
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0 or \
                node.attrs.get("beta", 1.0) != 1.0:
            return f"{what} has transA or alpha/beta other than 1"
    rows = weight.shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else \
        weight.shape[0]
    if rows != site.channels and site.channels != 1:
        return f"{what} expects {rows} input channels, the norm has {site.channels}"
    return None


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    """Fold `site` into every reader that can take it; gone when all of them did."""
    graph_outputs = {t.name for t in graph.outputs}
    readers = list(site.output.outputs)
    affine = site.affine
    pending: list[gs.Node] = []
    for node in readers:
        reason = _why_not(node, site)
        if reason is not None:
            report.reasons.append(reason)
            continue
        weight = constant_value(node.inputs[1])
        assert weight is not None
        trans_b = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        bias_slot: tuple[gs.Node, int] | None
        if node.op == "Gemm":
            bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 else None
            if len(node.inputs) > 2 and bias is None:
                report.reasons.append(f"reader Gemm '{node.name}' has a non-constant C")
                continue
            bias_slot = (node, 2) if len(node.inputs) > 2 else None
        else:
            bias_slot = bias_add(node, graph_outputs)
            bias = constant_value(bias_slot[0].inputs[bias_slot[1]]) if bias_slot else None
        if bias is not None and bias.ndim != 1:
            bias = None
            bias_slot = None
        try:
            folded: FoldedLinear = fold_into_gemm(affine, weight, bias, trans_b) \
                if node.op == "Gemm" else fold_into_matmul(affine, weight, bias)
        except FoldRejected as rejected:
            report.reasons.append(f"reader {node.op} '{node.name}': {rejected.reason}")
            continue
        replace_weight(node, 1, folded.weight, names)
        if bias_slot is not None or node.op == "Gemm":
            new_bias = gs.Constant(names.new(f"{node.name}_bias"), folded.bias)
            if bias_slot is not None:
                bias_slot[0].inputs[bias_slot[1]] = new_bias
            else:
                node.inputs.append(new_bias)
        else:  # a MatMul without a bias: the shift b @ W needs an Add of its own
            pending += place_affine_after(node, np.ones_like(folded.bias), folded.bias,
                                          folded.bias.dtype, graph, names,
                                          base=f"{node.name}_shift")
        node.inputs[0] = site.input
        report.absorbed_by.append(node.name)
        report.max_abs_weight_before = max(report.max_abs_weight_before,
                                           folded.max_abs_weight_before)
        report.max_abs_weight_after = max(report.max_abs_weight_after,
                                          folded.max_abs_weight_after)
    if site.output.name in graph_outputs:
        report.reasons.append("the norm's output is a graph output")
    gone = not site.output.outputs and site.output.name not in graph_outputs
    if gone:
        site.nodes[-1].outputs.clear()
    return Outcome(gone=gone, moved_to=pending)
