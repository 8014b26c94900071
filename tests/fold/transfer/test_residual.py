"""residual-add: a post-norm norm is carried past the residual Add as a pending affine,
dividing the branch's linear by a (or, for a pure shift, giving it the shift), until it folds
or meets a graph output; the second half: a pure shift on a pre-norm stream."""

from __future__ import annotations

import numpy as np
import pytest
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
    assert first.reasons[0] == "reader Relu 'act': Relu does not commute with a shift"
    assert report.sites[1].status == "folded", "the second norm folds into the head alone"
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


# --- a pure shift on a pre-norm stream (the shift a bias-less linear could not take, Swin's
# patch merging): into the next norms' shifts, and at the residual Add into the branch's bias

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


def _x12() -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(2, 5, 12)).astype(np.float32)}


@pytest.mark.parametrize("reader_norm", ["Add", "Sub", "SubFirst"])
def test_shift_goes_into_the_next_norm_and_the_branch_bias_leaving_no_op(reader_norm) -> None:
    m = _stage(reader_norm)
    folded, report = fold_model(m)
    assert [s.status for s in report.sites] == ["folded"] * 3, \
        [(s.name, s.reasons) for s in report.left]
    n0 = report.sites[0]
    assert n0.path[0].startswith("composed with 'n1_mul'"), n0.path
    assert "shift moved into the other operand of Add 'residual' (its shift into the " \
        "constant of Add 'fc1_bias')" in n0.path, n0.path
    # what the no-norm twin has: reduction, fc1 + bias, residual, head + bias
    assert report.ops_after == {"MatMul": 3, "Add": 3}
    assert_same_outputs(m, folded, _x12())


def test_with_the_stream_a_graph_output_the_shift_still_goes_into_the_branch_bias() -> None:
    m = _stage(stream_is_output=True)
    folded, report = fold_model(m)
    assert report.sites[0].status == "folded"
    assert report.ops_after == {"MatMul": 2, "Add": 2}, "reduction, fc1 + bias, residual"
    assert_same_outputs(m, folded, _x12())


CANNOT = {  # (the reader norm's last op, the extra reader, the status, its reason)
    "a reader that is no norm": (
        "Add", [N("Relu", ["t"], ["act"], name="act")], "partial",
        "reader Relu 'act': Relu does not commute with a shift"),
    "a second residual Add": (
        "Add", [N("Add", ["t", "r"], ["twice"], name="second_residual")], "materialized", None),
}


@pytest.mark.parametrize("case", list(CANNOT))
def test_where_the_shift_cannot_go_on_it_is_materialized_once(case: str) -> None:
    """A Relu needs the shifted values: one Add for it (the other readers still take the
    shift); a second residual Add whose other side is the stream itself carries it to the
    graph output, where it is materialized."""
    reader_norm, extra, status, reason = CANNOT[case]
    m = _stage(reader_norm, extra)
    folded, report = fold_model(m)
    n0 = report.sites[0]
    assert n0.status == status, (n0.status, n0.reasons)
    if reason is not None:
        assert reason in n0.reasons, n0.reasons
    assert_same_outputs(m, folded, _x12())


def test_a_reader_norm_without_a_shift_composes_as_well() -> None:
    m = _stage("none")
    folded, report = fold_model(m)
    assert [s.status for s in report.sites] == ["folded"] * 3
    assert_same_outputs(m, folded, _x12())
