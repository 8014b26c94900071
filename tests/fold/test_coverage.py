"""What the fold does not reach (unfold/fold/coverage.py) is said, not passed over: a quantized
model, a bfloat16 model (its norms found, reported as stayed, the model unchanged), norms in
an If's subgraphs and in model-local functions. Each makes no_norm_left false."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unfold.fold import fold_model

from .helpers import RNG, const, model, norm_constants

N = helper.make_node
C = 8


def _norm_nodes(x: str, out: str, prefix: str = "norm") -> list[onnx.NodeProto]:
    return [N("Mul", [x, f"{prefix}.scale"], [f"{prefix}_s"], name=f"{prefix}_mul"),
            N("Add", [f"{prefix}_s", f"{prefix}.shift"], [out], name=f"{prefix}_add")]


def test_a_quantized_model_says_so_and_is_left_as_it_is() -> None:
    nodes = [N("QuantizeLinear", ["x", "qs", "qz"], ["xq"]),
             N("DequantizeLinear", ["xq", "qs", "qz"], ["xd"]),
             *_norm_nodes("xd", "n"), N("MatMul", ["n", "W"], ["y"], name="fc")]
    inits = [*norm_constants(C), const("W", RNG.normal(size=(C, 4))), const("qs", 0.05),
             numpy_helper.from_array(np.array(0, np.int8), "qz")]
    m = model(nodes, inits, {"x": [2, C]}, {"y": [2, 4]})
    folded, report = fold_model(m)
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in m.graph.node]
    assert report.unreached and report.unreached[0].startswith(
        "quantized model (1 DequantizeLinear, 1 QuantizeLinear)")
    assert "fold the fp32 model, then quantize" in report.unreached[0]
    assert report.to_dict()["no_norm_left"] is False and not report


def test_a_bfloat16_models_norms_are_found_and_reported() -> None:
    def bf16(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(
            np.asarray(value, np.float32).astype(ml_dtypes.bfloat16), name)

    nodes = [*_norm_nodes("x", "n"), N("MatMul", ["n", "W"], ["y"], name="fc")]
    inits = [bf16("norm.scale", RNG.uniform(0.5, 2, C)), bf16("norm.shift", RNG.normal(size=C)),
             bf16("W", RNG.normal(size=(C, 4)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.BFLOAT16, [2, C])], [helper.make_tensor_value_info(
            "y", TensorProto.BFLOAT16, [2, 4])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.name == "norm_mul" and site.status == "stayed"
    assert "bfloat16 model" in site.reasons[0] and "fold the fp32 model" in site.reasons[0]
    assert folded == m, "left exactly as it was"
    assert not report


def test_norms_inside_an_ifs_subgraphs_are_reported() -> None:
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(_norm_nodes("x", f"{name}_out", prefix=name), name, [],
                                 [helper.make_tensor_value_info(f"{name}_out",
                                                                TensorProto.FLOAT, [2, C])],
                                 [const(f"{name}.scale", RNG.uniform(0.5, 2, C)),
                                  const(f"{name}.shift", RNG.normal(size=C))])

    nodes = [N("If", ["cond"], ["y"], name="choose", then_branch=branch("then"),
               else_branch=branch("otherwise"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, C]), helper.make_tensor_value_info(
        "cond", TensorProto.BOOL, [])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2, C])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    _, report = fold_model(m)
    assert report.sites == [] and len(report.unreached) == 2
    assert all(r.startswith("If 'choose' holds 1 norm(s)") for r in report.unreached)
    assert report.to_dict()["no_norm_left"] is False


def test_norms_inside_a_model_local_function_are_reported() -> None:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [C], RNG.uniform(0.5, 2, C))
    shift = helper.make_tensor("shift", TensorProto.FLOAT, [C], RNG.normal(size=C))
    body = [N("Constant", [], ["s"], value=scale), N("Constant", [], ["b"], value=shift),
            N("Mul", ["x", "s"], ["xs"]), N("Add", ["xs", "b"], ["y"])]
    function = helper.make_function("local", "UnNorm", ["x"], ["y"], body,
                                    [helper.make_opsetid("", 17)])
    graph = helper.make_graph([N("UnNorm", ["x"], ["y"], domain="local", name="norm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, C])])
    m = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    m.ir_version = 8
    folded, report = fold_model(m)
    assert report.unreached == ["the model-local function 'local:UnNorm' holds 1 norm(s), "
                                "which the fold does not enter (export without functions, "
                                "or inline them first)"]
    assert [n.op_type for n in folded.graph.node] == ["UnNorm"]


def test_a_scale_after_an_op_without_shapes_is_reported_unreached() -> None:
    """A norm after an op of another domain that has no function: ONNX infers no shapes past
    it, the site finder (which needs them) sees no norm, and the report must not say that no
    norm is left (before: no_norm_left true, 'unreached' empty)."""
    from onnx import helper

    from tests.fold.helpers import RNG, const, norm_constants

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="custom_relu", domain="com.example"),
             helper.make_node("Mul", ["r", "norm.scale"], ["s"], name="norm_mul"),
             helper.make_node("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             helper.make_node("MatMul", ["n", "W"], ["y"], name="mm")]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [2, 4])],
                              [helper.make_tensor_value_info("y", f, [2, 3])],
                              [*norm_constants(4), const("W", RNG.normal(size=(4, 3)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    _, report = fold_model(model)
    assert not report.to_dict()["no_norm_left"]
    (sentence,) = report.unreached
    assert "'norm_mul'" in sentence and "com.example:Relu 'custom_relu'" in sentence
