"""gate: a product with a variable (a gate, SwiGLU's x·σ(g), a mask multiply), or a division by
a variable, commutes with a pure scale, (s⊙x)⊙g = s⊙(x⊙g), and never with a shift."""

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
PURE_SCALE = [N("Div", ["x", "rho"], ["normed"], name="norm_div")]  # x / sqrt(ρ + eps)
HEAD = [N("MatMul", ["gated", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]


def _gated(op: str, normed_first: bool, shift: bool, gate_shape=("N", 5, C)
           ) -> onnx.ModelProto:
    """x -> norm (a pure scale, or scale and shift) -> `op` with the input g -> head."""
    inputs = ["normed", "g"] if normed_first else ["g", "normed"]
    inits = (norm_constants(C) if shift else [const("rho", RNG.uniform(0.5, 2, C))]) + \
        [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
    return model((NORM if shift else PURE_SCALE) + [N(op, inputs, ["gated"], name="gate")] +
                 HEAD, inits, {"x": ["N", 5, C], "g": list(gate_shape)}, {"y": ["N", 5, 3]})


def _feeds(gate_shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, 5, C)).astype(np.float32),
            "g": RNG.uniform(0.5, 2, gate_shape).astype(np.float32)}


@pytest.mark.parametrize(("op", "normed_first"), [("Mul", True), ("Mul", False), ("Div", True)],
                         ids=["x_times_g", "g_times_x", "x_over_g"])
def test_a_pure_scale_passes_a_product_with_a_variable(op: str, normed_first: bool) -> None:
    m = _gated(op, normed_first, shift=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == [f"scale moved past {op} 'gate'"]
    assert report.ops_after == {op: 1, "MatMul": 1, "Add": 1}, "the norm's Div is gone"
    assert_same_outputs(m, folded, _feeds())


def test_a_pure_scale_passes_a_gate_that_broadcasts_over_the_channels() -> None:
    """A per-token gate (N, 5, 1): the scale still lines up with the output's channels."""
    m = _gated("Mul", True, shift=False, gate_shape=("N", 5, 1))
    folded, report = fold_model(m)
    assert report.sites[0].status == "folded", report.sites[0]
    assert report.ops_after == {"Mul": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _feeds((2, 5, 1)))


@pytest.mark.parametrize(("op", "normed_first"), [("Mul", True), ("Mul", False), ("Div", True)],
                         ids=["x_times_g", "g_times_x", "x_over_g"])
def test_a_shift_stops_at_a_product_with_a_variable(op: str, normed_first: bool) -> None:
    """(s⊙x + b)⊙g = s⊙(x⊙g) + b⊙g, and b⊙g is no constant."""
    m = _gated(op, normed_first, shift=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == [f"reader {op} 'gate': a shift does not commute with a product of "
                            f"two variables ({op})"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds())


def test_a_variable_divided_by_the_norm_stops_it() -> None:
    """g / (s⊙x) is not affine in x, scale or no scale."""
    m = _gated("Div", False, shift=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Div 'gate': g / x is not affine in x"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds())
