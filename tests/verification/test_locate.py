"""first_divergence: two ONNX graphs that agree up to one node; that node is named."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from unfold.verification import first_divergence

N = helper.make_node


def _chain(w2: np.ndarray) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w3")]
    nodes = [N("MatMul", ["x", "w1"], ["h1"], name="fc1"), N("Relu", ["h1"], ["a1"], name="act1"),
             N("MatMul", ["a1", "w2"], ["h2"], name="fc2"), N("Relu", ["h2"], ["a2"], name="act2"),
             N("MatMul", ["a2", "w3"], ["y"], name="fc3")]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_names_the_first_node_whose_output_departs() -> None:
    w2 = np.random.default_rng(1).normal(size=(4, 4))
    broken = w2.copy()
    broken[0, 0] += 0.5
    x = {"x": np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)}
    divergence = first_divergence(_chain(w2), _chain(broken), x)
    assert divergence is not None
    assert (divergence.node, divergence.op_type, divergence.tensor) == ("fc2", "MatMul", "h2")
    assert divergence.compared == 3  # h1, a1, h2
    assert "fc2 (MatMul)" in divergence.describe()


def test_none_when_the_graphs_agree() -> None:
    w2 = np.random.default_rng(1).normal(size=(4, 4))
    x = {"x": np.ones((2, 4), np.float32)}
    assert first_divergence(_chain(w2), _chain(w2), x) is None
