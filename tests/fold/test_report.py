"""unfold.fold.report: a site is named by the torch module it came from, where the exporter
recorded it."""

from __future__ import annotations

import pytest
from onnx import helper

from unfold.fold.report import torch_module


def _node(name: str, scopes: str | None = None):
    node = helper.make_node("Mul", ["x", "s"], ["y"], name=name)
    if scopes is not None:
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", scopes
    return node


@pytest.mark.parametrize(("node", "module"), [
    (_node("node_mul_21", "['', 'blocks.3', 'blocks.3.norm1', 'mul_21']"), "blocks.3.norm1"),
    (_node("node_mul_2", "['', 'mul_2']"), None),  # the top-level module's own op
    (_node("node_mul_3", "not a list"), None),
    (_node("/blocks.3/norm1/Mul"), "blocks.3.norm1"),  # the TorchScript exporter's names
    (_node("/encoder/layers.0/norm1/Mul_1"), "encoder.layers.0.norm1"),
    (_node("/Mul"), None),
    (_node("norm_mul"), None),  # a graph from elsewhere
], ids=["dynamo", "dynamo-top", "dynamo-garbled", "torchscript", "torchscript-deep",
        "torchscript-top", "plain"])
def test_torch_module(node, module: str | None) -> None:
    assert torch_module(node) == module
