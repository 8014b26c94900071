"""constant-op: an elementwise op with a constant that is no norm (attention's 1/√d, an
embedding scale, a bias after a layout op) stays where it is, and its constant takes what it
can of the affine: a Mul or Div the scale, an Add or Sub the shift (divided by the scale that
goes on). The norm, transposed to channels first, meets it after a Transpose (which keeps it
from being part of the norm's own chain)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model

N = helper.make_node
C, T = 8, 5
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
        N("Transpose", ["normed"], ["t"], name="to_cf", perm=[0, 2, 1])]  # (N, C, T)


def _x() -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, T, C)).astype(np.float32)}


def _model(op: onnx.NodeProto, constant: np.ndarray, *, head: bool,
           scale: np.ndarray | None = None) -> onnx.ModelProto:
    """x -> norm -> Transpose -> `op` (with the constant 'k', writing 'o') -> Relu -> ...
    with `head`: Transpose back -> MatMul 'head' + bias; else the Relu is the output."""
    scale = RNG.uniform(0.5, 2, C) if scale is None else scale
    inits = [const("norm.scale", scale), const("norm.shift", RNG.normal(size=C)),
             const("k", constant)]
    nodes = NORM + [op, N("Relu", ["o"], ["r"], name="act")]
    outputs = {"r": ["N", C, T]}
    if head:
        nodes += [N("Transpose", ["r"], ["back"], name="to_cl", perm=[0, 2, 1]),
                  N("MatMul", ["back", "W"], ["mm"], name="head"),
                  N("Add", ["mm", "c"], ["y"], name="head_bias")]
        inits += [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
        outputs = {"y": ["N", T, 3]}
    return model(nodes, inits, {"x": ["N", T, C]}, outputs)


def _constant_of(folded: onnx.ModelProto, node_name: str) -> np.ndarray:
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    node = next(n for n in folded.graph.node if n.name == node_name)
    (value,) = [inits[i] for i in node.input if i in inits]
    return value


@pytest.mark.parametrize(("op", "inputs"), [("Mul", ["t", "k"]), ("Mul", ["k", "t"]),
                                            ("Div", ["t", "k"])],
                         ids=["x_times_k", "k_times_x", "x_over_k"])
def test_a_scalar_mul_or_div_takes_the_scale_into_its_constant(op: str, inputs) -> None:
    """(s⊙x + b)·k = x·(s·k) + b·k: the scalar becomes a per-channel (1, C, 1) constant and
    the Relu still needs the shift b·k: one Add stays, the norm's Mul is gone."""
    m = _model(N(op, inputs, ["o"], name="scaling"), np.array(0.5), head=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed", site
    assert site.path == ["moved past Transpose 'to_cf'",
                         f"moved past {op} 'scaling' (its constant took the scale)"]
    assert site.reasons == ["reader Relu 'act': Relu does not commute with a shift"]
    assert report.ops_after == {"Transpose": 1, op: 1, "Add": 1, "Relu": 1}, \
        "one op fewer than the norm had"
    assert _constant_of(folded, "scaling").reshape(-1).shape == (C,), "per channel now"
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize(("op", "inputs", "constant"),
                         [("Add", ["t", "k"], (C, 1)), ("Add", ["t", "k"], ()),
                          ("Sub", ["t", "k"], (C, 1)), ("Sub", ["k", "t"], (C, 1))],
                         ids=["x_plus_c", "x_plus_scalar", "x_minus_c", "c_minus_x"])
def test_a_constant_add_or_sub_takes_the_shift(op: str, inputs, constant) -> None:
    """(s⊙x + b) + c = s⊙(x + (b + c)⊘s), c − (s⊙x + b) = s⊙((c − b)⊘s − x): the constant
    takes the shift, the positive scale passes the Relu and the Transpose back and folds into
    the head: the graph is the twin's."""
    value = RNG.normal(size=constant) if constant else np.array(0.3)
    m = _model(N(op, inputs, ["o"], name="offset"), value, head=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past Transpose 'to_cf'",
                         f"moved past {op} 'offset' (its constant took the shift)",
                         "moved past Relu 'act'", "moved past Transpose 'to_cl'"]
    expected = {"Transpose": 2, "Relu": 1, "MatMul": 1, "Add": 1}
    expected[op] = expected.get(op, 0) + 1
    assert report.ops_after == expected, dict(report.ops_after)
    assert_same_outputs(m, folded, _x())


def test_a_constant_add_before_a_negative_scale_leaves_the_scale_for_the_relu() -> None:
    """The Add still takes the shift; the Relu stops a scale negative on some channel, which
    stays as one Mul (the norm's Add is gone)."""
    scale = RNG.uniform(0.5, 2, C)
    scale[3] = -1.0
    m = _model(N("Add", ["t", "k"], ["o"], name="offset"), RNG.normal(size=(C, 1)), head=True,
               scale=scale)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Relu 'act': Relu commutes with a positive scale only"]
    assert report.ops_after == {"Transpose": 2, "Add": 2, "Mul": 1, "Relu": 1, "MatMul": 1}
    assert_same_outputs(m, folded, _x())


def test_a_constant_divided_by_the_norm_stops_it() -> None:
    m = _model(N("Div", ["k", "t"], ["o"], name="inverse"), np.array(2.0), head=False)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Div 'inverse': c / x is not affine in x"]
    assert_same_outputs(m, folded, _x())
