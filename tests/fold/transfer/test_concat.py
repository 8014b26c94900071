"""Concat: a norm moves past torch.roll's Slice/Slice/Concat and past the concatenation of a
constant cls token (mapped back through the norm), then folds; along the channel axis the
affines are joined."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants, zero_one_scale

N = helper.make_node
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
HEAD = [N("MatMul", ["joined", "W"], ["mm"], name="head"), N("Add", ["mm", "c"], ["y"])]


def _int64(name: str, values) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _inits() -> list[onnx.TensorProto]:
    return norm_constants(8) + [const("W", RNG.normal(size=(8, 3))),
                                const("c", RNG.normal(size=3))]


def _roll() -> onnx.ModelProto:
    """torch.roll(normed, -2, dims=1) as the dynamo exporter writes it."""
    nodes = NORM + [N("Slice", ["normed", "two", "end", "ax"], ["tail"]),
                    N("Slice", ["normed", "zero", "two", "ax"], ["head_part"]),
                    N("Concat", ["tail", "head_part"], ["joined"], axis=1)] + HEAD
    inits = _inits() + [_int64("zero", [0]), _int64("two", [2]), _int64("end", [2**62]),
                        _int64("ax", [1])]
    return model(nodes, inits, {"x": ["N", 6, 8]}, {"y": ["N", 6, 3]})


def test_moves_past_a_roll_then_folds() -> None:
    m = _roll()
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert [step.split(" ")[2] for step in site.path] == ["Slice", "Slice", "Concat"], \
        site.path
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 1
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 6, 8)).astype(np.float32)})


def _cls_token(expand: bool) -> onnx.ModelProto:
    """Concat(cls, norm(x)) along the tokens, the cls token (1,1,8) expanded to the batch or
    (N fixed) given whole."""
    nodes = list(NORM)
    if expand:
        nodes += [N("Shape", ["x"], ["x_shape"]),
                  N("Slice", ["x_shape", "zero", "one"], ["batch"]),
                  N("Concat", ["batch", "one", "eight"], ["target"], axis=0),
                  N("Expand", ["cls", "target"], ["cls_b"])]
        inits = [const("cls", RNG.normal(size=(1, 1, 8))), _int64("zero", [0]),
                 _int64("one", [1]), _int64("eight", [8])]
    else:
        inits = [const("cls_b", RNG.normal(size=(2, 1, 8)))]
    nodes += [N("Concat", ["cls_b", "normed"], ["joined"], axis=1)] + HEAD
    return model(nodes, _inits() + inits, {"x": [2, 5, 8]}, {"y": [2, 6, 3]})


@pytest.mark.parametrize("expand", [True, False])
def test_moves_past_the_cls_token_concat_mapping_it_back(expand: bool) -> None:
    m = _cls_token(expand)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert any("its constant input mapped back through the affine" in p for p in site.path)
    assert "Mul" not in report.ops_after
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)})


def test_a_concat_with_another_tensor_joins_the_affines() -> None:
    """Along the channels: [A(x), other] is A'([x, other]) with A' = [A, identity] (exact,
    the channel concat of patch merging); along the tokens the identity part makes the
    affine vary per token, and a linear reading it cannot take that: it stays once."""
    nodes = NORM + [N("Concat", ["normed", "other"], ["wide"], axis=2),
                    N("MatMul", ["wide", "W16"], ["mm"], name="head16"),
                    N("Add", ["mm", "c"], ["y"], name="head16_bias"),
                    N("Concat", ["normed", "other"], ["long"], axis=1)]
    m = model(nodes, norm_constants(8) + [const("W16", RNG.normal(size=(16, 3))),
                                         const("c", RNG.normal(size=3))],
              {"x": [2, 5, 8], "other": [2, 5, 8]}, {"y": [2, 5, 3], "long": [2, 10, 8]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "materialized" and site.absorbed_by == ["head16"], site
    assert report.ops_after["Mul"] == 1
    feeds = {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32),
             "other": RNG.normal(size=(2, 5, 8)).astype(np.float32)}
    assert_same_outputs(m, folded, feeds)


def test_refuses_a_constant_part_when_the_scale_has_a_zero() -> None:
    m = _cls_token(expand=False)
    zero_one_scale(m, 3)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert any("no exact preimage" in r or "~0" in r for r in site.reasons), site.reasons
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)})
