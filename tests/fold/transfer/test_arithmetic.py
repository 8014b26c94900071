"""arithmetic: Add, Sub, Mul and Div have one handler, which picks the sub-rule by the operands
(a constant operand: constant-op; two variables: residual-add for Add/Sub, gate for Mul/Div).
Each case here is carried past the op by the sub-rule it names, and skipping exactly that
sub-rule stops it there, with that name in the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
C = 8
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
PURE_SCALE = [N("Div", ["x", "rho"], ["normed"], name="norm_div")]
HEAD = [N("MatMul", ["mid", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]


def _case(op: str, operand: str) -> onnx.ModelProto:
    """x -> norm -> `op`(normed, operand) -> head. `operand` "k": a constant that varies along
    tokens and channels (a position table, no norm step); "g": an input (a gate); "branch":
    a linear of x (a residual Add of a branch)."""
    inits = [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
    gate = operand == "g"
    inits += [const("rho", RNG.uniform(0.5, 2, C))] if gate else norm_constants(C)
    nodes = list(PURE_SCALE if gate else NORM)
    if operand == "k":
        inits.append(const("k", RNG.uniform(0.5, 2, (5, C))))
    if operand == "branch":
        nodes += [N("MatMul", ["x", "Wb"], ["bm"], name="branch"),
                  N("Add", ["bm", "cb"], ["branch_out"], name="branch_bias")]
        inits += [const("Wb", RNG.normal(size=(C, C))), const("cb", RNG.normal(size=C))]
        operand = "branch_out"
    inputs = {"x": ["N", 5, C]} | ({"g": ["N", 5, C]} if gate else {})
    return model(nodes + [N(op, ["normed", operand], ["mid"], name="op")] + HEAD, inits,
                 inputs, {"y": ["N", 5, 3]})


CASES = {  # (op, operand): the sub-rule that carries the norm past the op
    ("Add", "k"): "constant-op", ("Sub", "k"): "constant-op", ("Mul", "k"): "constant-op",
    ("Div", "k"): "constant-op",
    ("Add", "branch"): "residual-add", ("Sub", "branch"): "residual-add",
    ("Mul", "g"): "gate", ("Div", "g"): "gate",
}


@pytest.mark.parametrize(("op", "operand"), list(CASES), ids=[f"{o}_{k}" for o, k in CASES])
def test_the_operands_pick_the_sub_rule(op: str, operand: str) -> None:
    m = _case(op, operand)
    feeds = {"x": RNG.normal(size=(2, 5, C)).astype(np.float32)}
    if operand == "g":
        feeds["g"] = RNG.uniform(0.5, 2, (2, 5, C)).astype(np.float32)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.absorbed_by == ["head"], site
    assert_same_outputs(m, folded, feeds)
    rule = CASES[(op, operand)]
    _, skipped = fold_model(m, skip=[rule])
    (site,) = skipped.sites
    assert site.status != "folded", (rule, site)
    assert f"reader {op} 'op': rule '{rule}' is skipped" in site.reasons, site.reasons
    others = {r for r in CASES.values() if r != rule}
    _, unaffected = fold_model(m, skip=sorted(others))
    assert unaffected.sites[0].status == "folded", "only its own sub-rule stops it"
