"""compose: a norm site that a pending affine reaches composes with it (rule 4) and goes,
A2(A1(x)) = (s2⊙s1)⊙x + (s2⊙b1 + b2); one reached by a pure pending shift (what a bias-less
linear passes on) may still send its scale back into that linear. `--skip compose` turns the
composition off."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
C = 8
FIRST = [N("Mul", ["x", "n1.scale"], ["s1"], name="n1_mul"),
         N("Add", ["s1", "n1.shift"], ["n1"], name="n1_add")]
SECOND = [N("Mul", ["mid", "n2.scale"], ["s2"], name="n2_mul"),
          N("Add", ["s2", "n2.shift"], ["n2"], name="n2_add")]
HEAD = [N("MatMul", ["n2", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]
BN = ["gamma", "beta", "mean", "var"]


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _bn_inits(channels: int) -> list[onnx.TensorProto]:
    return [const("gamma", RNG.normal(1, 0.3, channels)),
            const("beta", RNG.normal(size=channels)), const("mean", RNG.normal(size=channels)),
            const("var", RNG.uniform(0.5, 2, channels))]


def _x(shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


def _two_norms(between: list, second: list, extra: list | None = None) -> onnx.ModelProto:
    """x -> n1 -> `between` -> the second norm (writing 'n2') -> MatMul 'head' + bias."""
    nodes = FIRST + between + second + HEAD
    inits = norm_constants(C, "n1") + norm_constants(C, "n2") + (extra or []) + \
        [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
    used = {i for n in nodes for i in n.input}
    return model(nodes, [i for i in inits if i.name in used], {"x": ["N", 5, C]},
                 {"y": ["N", 5, 3]})


IDENTITY = [N("Identity", ["n1"], ["mid"], name="between")]
TRANSPOSED_BN = [N("Transpose", ["n1"], ["t"], name="to_cf", perm=[0, 2, 1]),
                 N("BatchNormalization", ["t", *BN], ["bn"], name="bn"),
                 N("Transpose", ["bn"], ["n2"], name="to_cl", perm=[0, 2, 1])]


@pytest.mark.parametrize("case", ["identity_between", "dropout_between", "reshape_between"])
def test_two_norms_in_a_row_compose_into_one_affine_the_head_takes(case: str) -> None:
    between = {"identity_between": IDENTITY,
               "dropout_between": [N("Dropout", ["n1"], ["mid"], name="between")],
               "reshape_between": [N("Reshape", ["n1", "same"], ["mid"], name="between")]}[case]
    m = _two_norms(between, SECOND, [_int64("same", [0, 0, C])])
    folded, report = fold_model(m)
    first, second = report.sites
    assert (first.status, first.absorbed_by) == ("folded", ["head"]), first
    assert first.path == [f"moved past {between[0].op_type} 'between'",
                          "composed with 'n2_mul' (offline affine (Mul/Add))"]
    assert (second.status, second.merged_into) == ("folded", "n1_mul"), second
    assert second.path == ["composed into 'n1_mul'"]
    # an Identity, or a Reshape to the tensor's own shape, goes in the tidy-up; a Dropout stays
    kept = {"Dropout": 1} if case == "dropout_between" else {}
    assert report.ops_after == {**kept, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_a_last_axis_norm_composes_with_a_transposed_batch_norm() -> None:
    """n1 on the channels last, then BatchNorm1d on the tokens transposed: the pending moves
    past the Transpose onto axis 1, where the BN's affine lives, composes, moves back and
    folds; the two Transposes are a round trip once the BN is gone."""
    m = _two_norms([], TRANSPOSED_BN, _bn_inits(C))
    folded, report = fold_model(m)
    first, bn = report.sites
    assert (first.status, first.absorbed_by) == ("folded", ["head"]), first
    assert "composed with 'bn' (BatchNormalization)" in first.path, first.path
    assert (bn.kind, bn.status, bn.merged_into) == ("BatchNormalization", "folded", "n1_mul")
    assert report.ops_after == {"MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def _levit(act: str = "Relu") -> onnx.ModelProto:
    """LeViT's linear: x -> norm -> bias-less MatMul 'proj' -> Reshape (B·N, C') ->
    BatchNormalization -> Reshape back -> activation."""
    nodes = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
             N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
             N("MatMul", ["normed", "W"], ["p"], name="proj"),
             N("Reshape", ["p", "flat"], ["pf"], name="flatten"),
             N("BatchNormalization", ["pf", *BN], ["bn_out"], name="bn"),
             N("Reshape", ["bn_out", "back"], ["pb"], name="unflatten"),
             N(act, ["pb"], ["y"], name="act")]
    inits = norm_constants(C) + [const("W", RNG.normal(size=(C, 6))), _int64("flat", [-1, 6]),
                                 _int64("back", [2, 5, 6])] + _bn_inits(6)
    return model(nodes, inits, {"x": [2, 5, C]}, {"y": [2, 5, 6]})


@pytest.mark.parametrize("act", ["Relu", "HardSwish"])
def test_a_norm_after_a_pure_pending_shift_sends_its_scale_into_the_bias_less_producer(
        act: str) -> None:
    """The first norm folds into 'proj', whose missing bias leaves b @ W as a pending shift;
    the BN composes with that shift, and their scale goes back into 'proj' (through the
    Reshape): what is left of both is one Add before the activation."""
    m = _levit(act)
    folded, report = fold_model(m)
    first, bn = report.sites
    assert (first.status, first.absorbed_by) == ("folded", ["proj"]), first
    assert "folded into its producer MatMul 'proj'" in first.path, first.path
    assert (bn.status, bn.merged_into) == ("stayed", "norm_mul"), bn
    assert len(bn.reasons) == 1 and bn.reasons[0].startswith(f"reader {act} 'act': "), bn
    assert report.ops_after == {"MatMul": 1, "Add": 1, act: 1}, dict(report.ops_after)
    assert_same_outputs(m, folded, _x((2, 5, C)))


def test_skip_compose_keeps_the_first_norm_and_says_why() -> None:
    m = _two_norms(IDENTITY, SECOND)
    folded, report = fold_model(m, skip=["compose"])
    first, second = report.sites
    assert first.status == "stayed", first
    assert first.reasons == ["reader Mul 'n2_mul': rule 'compose' is skipped"]
    assert second.merged_into is None
    assert not [step for site in report.sites for step in site.path if "compose" in step]
    assert_same_outputs(m, folded, _x())


def test_skip_compose_the_second_norm_still_folds_into_the_head() -> None:
    """With composition off the first norm is materialized for the second, which then starts
    afresh and folds into the head: one Mul and one Add (the first norm's) are left."""
    m = _two_norms(IDENTITY, SECOND)
    folded, report = fold_model(m, skip=["compose"])
    first, second = report.sites
    assert first.status == "stayed", first
    assert (second.status, second.absorbed_by) == ("folded", ["head"]), second
    assert report.ops_after == {"Mul": 1, "Add": 2, "MatMul": 1}
    assert_same_outputs(m, folded, _x())
