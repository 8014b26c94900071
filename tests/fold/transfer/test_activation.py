"""activation: Relu, LeakyRelu and PRelu (one slope) are positively homogeneous, relu(s⊙x) =
s⊙relu(x) for s > 0: a positive pure scale passes (a ConvNet BatchNorm's, once a bias-less
producer took its shift); a shift, or a scale negative on some channel, stops it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model

N = helper.make_node
C = 8
ACTIVATIONS = {
    "Relu": N("Relu", ["normed"], ["act_out"], name="act"),
    "LeakyRelu": N("LeakyRelu", ["normed"], ["act_out"], name="act", alpha=0.1),
    "PRelu": N("PRelu", ["normed", "slope"], ["act_out"], name="act"),
}


def _activated(op: str, scale: np.ndarray, shift: bool) -> onnx.ModelProto:
    """x -> x / rho (a pure scale, 1/rho) or x * scale + shift -> `op` -> MatMul head."""
    if shift:
        norm = [N("Mul", ["x", "scale"], ["scaled"], name="norm_mul"),
                N("Add", ["scaled", "shift"], ["normed"], name="norm_add")]
        inits = [const("scale", scale), const("shift", RNG.normal(size=C))]
    else:
        norm = [N("Div", ["x", "rho"], ["normed"], name="norm_div")]
        inits = [const("rho", 1.0 / scale)]
    inits += [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
    if op == "PRelu":
        inits.append(const("slope", np.array([0.2])))
    nodes = norm + [ACTIVATIONS[op], N("MatMul", ["act_out", "W"], ["mm"], name="head"),
                    N("Add", ["mm", "c"], ["y"], name="head_bias")]
    return model(nodes, inits, {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})


def _x() -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, 5, C)).astype(np.float32)}


def _positive() -> np.ndarray:
    return RNG.uniform(0.5, 2, C)


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_a_positive_pure_scale_passes_and_folds_into_the_head(op: str) -> None:
    m = _activated(op, _positive(), shift=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == [f"moved past {op} 'act'"]
    assert report.ops_after == {op: 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_a_scale_negative_on_one_channel_stops_it(op: str) -> None:
    scale = _positive()
    scale[2] = -0.7
    m = _activated(op, scale, shift=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == [f"reader {op} 'act': {op} commutes with a positive scale only"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize("op", list(ACTIVATIONS))
def test_a_shift_stops_it(op: str) -> None:
    m = _activated(op, _positive(), shift=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == [f"reader {op} 'act': {op} does not commute with a shift"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())
