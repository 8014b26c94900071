"""Rule 5 (residual-add): a post-norm norm is carried past the residual Add as a pending
affine, dividing the branch's linear by a, until it folds or meets a graph output."""

from __future__ import annotations

import numpy as np
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node


def _post_norm_block(relu_branch: bool = False, scale: np.ndarray | None = None):
    """x -> norm -> (+ branch) -> second norm -> head. branch = normed @ W1 + c1 (or Relu)."""
    branch = ([N("Relu", ["normed"], ["w"], name="act")] if relu_branch else
              [N("MatMul", ["normed", "W1"], ["mm1"], name="fc1"),
               N("Add", ["mm1", "c1"], ["w"], name="fc1_bias")])
    nodes = [N("Mul", ["x", "n1.scale"], ["s1"], name="n1_mul"),
             N("Add", ["s1", "n1.shift"], ["normed"], name="n1_add"),
             *branch,
             N("Add", ["normed", "w"], ["res"], name="residual"),
             N("Mul", ["res", "n2.scale"], ["s2"], name="n2_mul"),
             N("Add", ["s2", "n2.shift"], ["normed2"], name="n2_add"),
             N("MatMul", ["normed2", "W2"], ["mm2"], name="head"),
             N("Add", ["mm2", "c2"], ["y"], name="head_bias")]
    inits = norm_constants(8, "n1") + norm_constants(8, "n2") + [
        const("W1", RNG.normal(size=(8, 8))), const("c1", RNG.normal(size=8)),
        const("W2", RNG.normal(size=(8, 3))), const("c2", RNG.normal(size=3))]
    if scale is not None:
        inits[0] = const("n1.scale", scale)
    return model(nodes, inits, {"x": ["N", 5, 8]}, {"y": ["N", 5, 3]})


def _x() -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)}


def test_norm_is_carried_past_the_residual_add_and_composed_with_the_next() -> None:
    m = _post_norm_block()
    folded, report = fold_model(m)
    first, second = report.sites
    assert first.status == second.status == "folded"
    assert first.absorbed_by[0] == "fc1", "the branch's linear reads the norm too"
    assert any("carried past the residual Add 'residual' (divided 'fc1')" in p
               for p in first.path)
    assert report.ops_after == {"MatMul": 2, "Add": 3}, "fc1 + bias, residual, head + bias"
    assert_same_outputs(m, folded, _x())


def test_not_carried_when_the_branch_is_not_a_linear() -> None:
    m = _post_norm_block(relu_branch=True)
    folded, report = fold_model(m)
    first = report.sites[0]
    assert first.status == "stayed"
    assert first.reasons == ["reader Relu 'act' is not a MatMul or Gemm",
                             "reader Add 'residual' is not a MatMul or Gemm"]
    assert_same_outputs(m, folded, _x())


def test_not_carried_when_a_channel_scale_is_zero() -> None:
    scale = RNG.uniform(0.5, 2, 8)
    scale[3] = 0.0
    m = _post_norm_block(scale=scale)
    folded, report = fold_model(m)
    first = report.sites[0]
    assert first.status == "partial", "fc1 still takes it; the residual cannot"
    assert any("~0 on 1 channel" in r for r in first.reasons), first.reasons
    assert_same_outputs(m, folded, _x())
