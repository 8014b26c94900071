"""Rule 2 (producer): a norm folds into the Conv / MatMul / Gemm that produces it, back through
the layout ops between them (Swin's patch embed: Conv -> flatten -> transpose -> norm)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import (
    RNG,
    assert_same_outputs,
    const,
    model,
    norm_constants,
    replace_initializer,
)

N = helper.make_node
NORM = [N("Mul", ["t", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["y"], name="norm_add")]


def _int64(name: str, values) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _patch_embed(pads: list[int], bias: bool = True) -> onnx.ModelProto:
    """images (N,3,8,8) -> Conv 8 channels -> (N,8,16) -> (N,16,8) -> norm, and the residual
    Add that keeps rule 1 from taking it."""
    conv_inputs = ["images", "W", "B"] if bias else ["images", "W"]
    nodes = [N("Conv", conv_inputs, ["c"], name="patch_embed", kernel_shape=[2, 2],
               strides=[2, 2], pads=pads),
             N("Reshape", ["c", "flat"], ["f"]),
             N("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
             *NORM, N("Add", ["y", "y"], ["out"])]
    inits = [const("W", RNG.normal(size=(8, 3, 2, 2))), _int64("flat", [0, 8, -1]),
             *norm_constants(8)] + ([const("B", RNG.normal(size=8))] if bias else [])
    side = (8 + pads[0] + pads[2] - 2) // 2 + 1
    return model(nodes, inits, {"images": ["N", 3, 8, 8]}, {"out": ["N", side * side, 8]})


@pytest.mark.parametrize(("pads", "bias"), [([0, 0, 0, 0], True), ([1, 1, 1, 1], False)])
def test_folds_into_a_patch_embed_conv_through_flatten_and_transpose(pads, bias) -> None:
    m = _patch_embed(pads, bias)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert site.path == ["folded into its producer Conv 'patch_embed'"]
    assert not {"Mul"} & set(report.ops_after), dict(report.ops_after)
    assert report.ops_after["Add"] == 1, "only the residual Add is left"
    onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(m, folded, {"images": RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)})


def _matmul_then_norm(bias: bool, extra_reader: bool = False) -> onnx.ModelProto:
    nodes = [N("MatMul", ["x", "W"], ["m"], name="proj")]
    nodes += [N("Add", ["m", "c"], ["t"], name="proj_bias")] if bias else \
        [N("Identity", ["m"], ["t"])]
    nodes += NORM + [N("Add", ["y", "y"], ["out"])]
    outputs = {"out": ["N", 5, 8]}
    if extra_reader:
        nodes.append(N("Relu", ["t"], ["side"]))
        outputs["side"] = ["N", 5, 8]
    inits = [const("W", RNG.normal(size=(6, 8))), *norm_constants(8)] + \
        ([const("c", RNG.normal(size=8))] if bias else [])
    return model(nodes, inits, {"x": ["N", 5, 6]}, outputs)


def test_folds_into_a_matmul_and_its_bias_add() -> None:
    m = _matmul_then_norm(bias=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.absorbed_by == ["proj"], site.reasons
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 2
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 6)).astype(np.float32)})


@pytest.mark.parametrize(("extra_reader", "reason"), [
    (False, "it has no bias to take the shift"),
    (True, None),  # the producer's output is read elsewhere: not this rule's business
])
def test_does_not_apply_where_it_would_be_wrong(extra_reader: bool, reason: str | None) -> None:
    m = _matmul_then_norm(bias=False, extra_reader=extra_reader)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    producer_reasons = [r for r in site.reasons if "producer" in r]
    assert producer_reasons == ([f"cannot fold into the producer MatMul 'proj': {reason}"]
                                if reason else [])
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 6)).astype(np.float32)})


def test_a_scale_that_overflows_the_weights_is_not_folded() -> None:
    m = _patch_embed([0, 0, 0, 0])
    replace_initializer(m, "norm.scale", np.full(8, 3e38))
    replace_initializer(m, "W", np.full((8, 3, 2, 2), 10.0))
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert any("non-finite" in r for r in site.reasons), site.reasons
