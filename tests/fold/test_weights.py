"""Weights kept apart (ModelParts): the parts of a model are the model, the fold frees what it
replaces, and a fold through parts equals a fold of the whole ModelProto."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from unfold.fold import ModelParts, fold_model, fold_parts
from unfold.fold.graph import Names, replace_weight
from unfold.model_parts import weight_proto

from .helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node


def _norm_then_linear() -> onnx.ModelProto:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("MatMul", ["n", "W"], ["m"], name="fc"), N("Add", ["m", "c"], ["y"])]
    return model(nodes, norm_constants(64) + [const("W", RNG.normal(size=(64, 32))),
                                              const("c", RNG.normal(size=32))],
                 {"x": ["N", 64]}, {"y": ["N", 32]})


def test_parts_of_a_model_are_that_model() -> None:
    m = _norm_then_linear()
    parts = ModelParts.viewing(m)
    assert not parts.skeleton.graph.initializer
    assert list(parts.weights) == ["norm.scale", "norm.shift", "W", "c"]
    assert parts.to_model() == m
    assert parts.weights == {}, "to_model moves the weights out"


def test_a_weight_under_another_name_is_written_under_its_own() -> None:
    """The value of a Constant node is a TensorProto with a name of its own (or none)."""
    value = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "")
    assert weight_proto("table", value).name == "table"
    assert value.name == "", "the given TensorProto is left as it was"
    assert weight_proto("W", value) is not value
    named = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), "W")
    assert weight_proto("W", named) is named, "no copy when the name is right"


def test_fold_parts_equals_fold_model_and_keeps_untouched_weights() -> None:
    m = _norm_then_linear()
    by_model, _ = fold_model(m)
    parts = ModelParts.viewing(m)
    input_name = parts.skeleton.graph.input[0].name
    folded, report = fold_parts(parts)
    assert parts.weights == {}, "fold_parts takes the weights out of what it is given"
    assert [s.status for s in report.sites] == ["folded"]
    (new_weight,) = [w for name, w in folded.weights.items() if name.startswith("W_unfold")]
    assert isinstance(new_weight, np.ndarray) and new_weight.shape == (64, 32)
    assert folded.skeleton.graph.input[0].name == input_name
    assert not folded.skeleton.graph.initializer, "the weights stay apart"
    assert_same_outputs(m, by_model, {"x": RNG.normal(size=(3, 64)).astype(np.float32)})
    assert_same_outputs(by_model, folded.to_model(),
                        {"x": RNG.normal(size=(3, 64)).astype(np.float32)})


def test_a_replaced_weight_lets_its_values_go_unless_still_read() -> None:
    """onnx-graphsurgeon tensors sit in reference cycles: a replaced weight would stay in
    memory until a full garbage collection, were its values not dropped at once."""
    weight = gs.Constant("W", np.ones((4, 4), dtype=np.float32))
    first = gs.Node("MatMul", "first", inputs=[gs.Variable("x"), weight],
                    outputs=[gs.Variable("y")])
    second = gs.Node("MatMul", "second", inputs=[gs.Variable("z"), weight],
                     outputs=[gs.Variable("w")])
    graph = gs.Graph(nodes=[first, second])
    names = Names(graph)
    replace_weight(first, 1, np.zeros((4, 4), dtype=np.float32), names)
    assert weight.values.shape == (4, 4), "'second' still reads it"
    held = weight.values
    before = sys.getrefcount(held)
    replace_weight(second, 1, np.zeros((4, 4), dtype=np.float32), names)
    assert weight.values.size == 0 and sys.getrefcount(held) == before - 1
    assert first.inputs[1].name != second.inputs[1].name != "W"
