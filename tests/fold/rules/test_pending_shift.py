"""Rule 5 on a pre-norm stream (pending-shift): the shift a bias-less linear could not take goes
down the stream into the next norms' shifts, past the residual Adds, until a norm takes it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node


def _norm(prefix: str, x: str, out: str, last: str = "Add") -> list:
    """x * scale, then + shift (Add), - shift (Sub, data first) or shift - (Sub, constant
    first: the scale's sign flips the result back)."""
    scaled = f"{prefix}_scaled"
    second = {"Add": N("Add", [scaled, f"{prefix}.shift"], [out], name=f"{prefix}_add"),
              "Sub": N("Sub", [scaled, f"{prefix}.shift"], [out], name=f"{prefix}_sub"),
              "SubFirst": N("Sub", [f"{prefix}.shift", scaled], [out], name=f"{prefix}_sub"),
              "none": None}[last]
    mul = N("Mul", [x, f"{prefix}.scale"], [scaled if second else out], name=f"{prefix}_mul")
    return [mul] + ([second] if second else [])


def _stage(reader_norm: str = "Add", extra_reader: list | None = None,
           stream_is_output: bool = False):
    """x -> norm0 -> bias-less MatMul 'reduction' -> t; pre-norm block on t:
    t + fc1(norm1(t)) -> norm2 -> head -> y (or the residual sum is the output)."""
    nodes = [*_norm("n0", "x", "n0_out"),
             N("MatMul", ["n0_out", "W0"], ["t"], name="reduction"),
             *_norm("n1", "t", "n1_out", reader_norm),
             N("MatMul", ["n1_out", "W1"], ["mm1"], name="fc1"),
             N("Add", ["mm1", "c1"], ["f"], name="fc1_bias"),
             N("Add", ["t", "f"], ["r"], name="residual"),
             *(extra_reader or [])]
    if not stream_is_output:
        nodes += [*_norm("n2", "r", "n2_out"), N("MatMul", ["n2_out", "W2"], ["mm2"], name="head"),
                  N("Add", ["mm2", "c2"], ["y"], name="head_bias")]
    inits = [*norm_constants(12, "n0"), const("W0", RNG.normal(size=(12, 8))),
             *norm_constants(8, "n1"), const("W1", RNG.normal(size=(8, 8))),
             const("c1", RNG.normal(size=8)), *norm_constants(8, "n2"),
             const("W2", RNG.normal(size=(8, 3))), const("c2", RNG.normal(size=3))]
    used = {i for n in nodes for i in n.input}
    outputs = {"r": ["N", 5, 8]} if stream_is_output else {"y": ["N", 5, 3]}
    outputs.update({o: ["N", 5, 8] for n in (extra_reader or []) for o in n.output})
    return model(nodes, [i for i in inits if i.name in used], {"x": ["N", 5, 12]}, outputs)


def _x() -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, 5, 12)).astype(np.float32)}


@pytest.mark.parametrize("reader_norm", ["Add", "Sub", "SubFirst"])
def test_shift_goes_into_the_next_norms_and_leaves_no_op_behind(reader_norm: str) -> None:
    m = _stage(reader_norm)
    folded, report = fold_model(m)
    assert [s.status for s in report.sites] == ["folded"] * 3, \
        [(s.name, s.reasons) for s in report.left]
    n0 = report.sites[0]
    assert "shift carried past the residual Add 'residual' and into the shifts of 'n1_mul'" \
        in n0.path, n0.path
    # what the no-norm twin has: reduction, fc1 + bias, residual, head + bias
    assert report.ops_after == {"MatMul": 3, "Add": 3}
    assert_same_outputs(m, folded, _x())


def test_at_a_graph_output_the_shift_is_materialized() -> None:
    m = _stage(stream_is_output=True)
    folded, report = fold_model(m)
    assert report.sites[0].status == "materialized"
    assert report.ops_after == {"MatMul": 2, "Add": 3}, "reduction, fc1 + bias, residual, shift"
    assert_same_outputs(m, folded, _x())


CANNOT = {
    "a reader that is no norm": (
        "Add", [N("Relu", ["t"], ["act"], name="act")],
        "reader Relu 'act' is neither a norm nor a residual Add"),
    "a second residual Add": (
        "Add", [N("Add", ["t", "r"], ["twice"], name="second_residual")],
        "reader Add 'second_residual' is a second residual Add"),
    "a reader norm without a shift": (
        "none", [], "reader Mul 'n1_mul' starts a norm that ends with Mul, not Add/Sub"),
}


@pytest.mark.parametrize("case", list(CANNOT))
def test_shift_stays_as_the_bias_of_the_linear(case: str) -> None:
    """Where the shift cannot go on it stays where it is: the MatMul's bias, one Add more
    than the twin; the rule's reason is what the site reports."""
    reader_norm, extra, reason = CANNOT[case]
    m = _stage(reader_norm, extra)
    folded, report = fold_model(m)
    n0 = report.sites[0]
    assert n0.status == "folded"
    assert n0.path[-1] == "its shift stays as the bias of MatMul 'reduction'", n0.path
    assert any(reason in r for r in n0.reasons), n0.reasons
    assert_same_outputs(m, folded, _x())
