"""unfold.precision.half: an fp32 graph in fp16 / bf16, its edges in the declared types, the
nodes that need fp32 kept so with their reasons, a weight past the type's range refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from unfold.errors import UnfoldError
from unfold.model_parts import ModelParts
from unfold.precision.checked import measured_ranges
from unfold.precision.half import (
    ACTIVATION_LIMIT,
    tensor_precisions,
    to_half,
)

from ..fold.helpers import RNG, const, model, run

N = helper.make_node


def _block(opset: int = 17, weight_scale: float = 1.0) -> onnx.ModelProto:
    """MatMul -> LayerNormalization -> Gelu-ish (Mul by a Constant) -> output, and the MatMul's
    result is also an output (read inside and outside)."""
    nodes = [N("MatMul", ["x", "W"], ["h"], name="fc"),
             N("LayerNormalization", ["h", "g", "b"], ["n"], name="ln", axis=-1),
             N("Constant", [], ["half"], name="k", value_float=0.5),
             N("Mul", ["n", "half"], ["y"], name="scale"),
             N("Cast", ["y"], ["y32"], name="cast", to=TensorProto.FLOAT)]
    inits = [const("W", RNG.normal(size=(16, 16)) * weight_scale),
             const("g", RNG.uniform(0.5, 2, 16)), const("b", RNG.normal(size=16))]
    return model(nodes, inits, {"x": ["batch", 16]}, {"y32": ["batch", 16], "h": ["batch", 16]},
                 opset=opset)


def _half(m: onnx.ModelProto, precision: str, **kwargs):
    parts, report = to_half(ModelParts.viewing(m), precision, **kwargs)
    half = parts.to_model()
    onnx.checker.check_model(half, full_check=True)
    return half, report


def test_fp16_converts_weights_and_compute_and_keeps_the_declared_edges() -> None:
    m = _block()
    half, report = _half(m, "fp16")
    declared = {v.name: v.type.tensor_type.elem_type for v in [*half.graph.input,
                                                                *half.graph.output]}
    assert declared == {"x": TensorProto.FLOAT, "y32": TensorProto.FLOAT, "h": TensorProto.FLOAT}
    weights = {t.name: t.data_type for t in half.graph.initializer}
    assert weights["W"] == TensorProto.FLOAT16
    # LayerNormalization stays fp32, with its scale and bias: its reason is reported
    assert [(k.name, k.op) for k in report.kept] == [("ln", "LayerNormalization")]
    assert "statistics online" in report.kept[0].reason
    assert weights["g"] == weights["b"] == TensorProto.FLOAT
    precisions = tensor_precisions(half)
    assert precisions["n"] == "fp32" and precisions["y"] == "fp16" and precisions["y32"] == "fp32"
    # Casts: x in, h out (a graph output written in fp16), h into the LN, n out of it
    assert report.casts == 4 and [n.op_type for n in half.graph.node].count("Cast") == 5
    x = RNG.normal(size=(3, 16)).astype(np.float32)
    for want, got in zip(run(m, {"x": x}), run(half, {"x": x}), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())


def test_bf16_runs_as_onnx_defines_it() -> None:
    m = _block(opset=22)
    half, report = _half(m, "bf16")
    assert {t.name: t.data_type for t in half.graph.initializer}["W"] == TensorProto.BFLOAT16
    x = RNG.normal(size=(3, 16)).astype(np.float32)
    want = run(m, {"x": x})
    got = ReferenceEvaluator(half).run(None, {"x": x})
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=3e-2 * np.abs(a).max())
    assert tensor_precisions(half)["y"] == "bf16" and tensor_precisions(half)["h"] == "fp32"


def test_an_op_whose_schema_lacks_the_type_at_the_models_opset_stays_fp32() -> None:
    nodes = [N("Conv", ["x", "w"], ["y"], name="conv")]
    for opset, kept in ((20, True), (22, False)):
        m = model(nodes, [const("w", RNG.normal(size=(4, 2, 1, 1)))], {"x": [1, 2, 4, 4]},
                  {"y": [1, 4, 4, 4]}, opset=opset)
        _, report = _half(m, "bf16")
        assert bool(report.kept) is kept
        if kept:
            assert report.kept[0].reason == "ONNX opset 20's Conv does not take bfloat16"


def test_a_weight_past_fp16s_largest_value_is_refused_by_name_and_bf16_holds_it() -> None:
    m = _block()
    w = next(t for t in m.graph.initializer if t.name == "W")
    values = onnx.numpy_helper.to_array(w).copy()
    values[3, 5] = 70000.0
    w.CopyFrom(onnx.numpy_helper.from_array(values, "W"))
    with pytest.raises(UnfoldError, match=r"initializer 'W': its largest \|value\| 7e\+04 is "
                                          r"past fp16's largest 65504: fold with --max-scale"):
        to_half(ModelParts.viewing(m), "fp16")
    _half(m, "bf16")


def test_an_activation_fp16_would_not_hold_keeps_its_readers_and_writer_fp32() -> None:
    m = _block(weight_scale=2000.0)  # h reaches ~1e4 on N(0, 1) inputs: past the limit
    feeds = [{"x": RNG.normal(size=(8, 16)).astype(np.float32)}]
    ranges = measured_ranges(m, feeds)
    assert ranges["h"] > ACTIVATION_LIMIT > ranges["y"]
    half, report = _half(m, "fp16", ranges=ranges)
    kept = {k.name: k.reason for k in report.kept}
    assert set(kept) == {"fc", "ln"} and "'h' reaches" in kept["fc"]
    assert tensor_precisions(half)["h"] == "fp32" and tensor_precisions(half)["y"] == "fp16"
    assert report.measured


def test_the_input_model_is_left_as_it_was() -> None:
    m = _block()
    before = m.SerializeToString()
    _half(m, "fp16")
    assert m.SerializeToString() == before


def test_a_masks_float32_extreme_keeps_its_readers_fp32_in_both_types() -> None:
    """transformers adds torch.finfo(float32).min for a masked key: neither half type holds
    it (bf16's largest is 3.39e38), but it is no learned weight to refuse: the Where that
    reads it stays fp32."""
    nodes = [N("Where", ["keep", "x", "minus_inf"], ["masked"], name="mask"),
             N("Softmax", ["masked"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 4]),
                     helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [const("minus_inf", np.float32(np.finfo(np.float32).min))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for precision in ("fp16", "bf16"):
        half, report = _half(m, precision)
        assert [(k.name, k.reason.split(" (")[0]) for k in report.kept] == [
            ("mask", "'minus_inf' holds float32's extreme -3.403e+38")]
        assert tensor_precisions(half)[f"y_{precision}"] == precision, "the Softmax converts"
