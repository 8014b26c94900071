"""Tiny ONNX models for the fold tests, and the checks every fold test makes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def model(nodes, initializers, inputs: dict[str, list], outputs: dict[str, list],
          opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def norm_constants(channels: int, prefix: str = "norm") -> list[onnx.TensorProto]:
    return [const(f"{prefix}.scale", RNG.uniform(0.3, 2.0, channels)),
            const(f"{prefix}.shift", RNG.normal(size=channels))]


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(original: onnx.ModelProto, folded: onnx.ModelProto,
                        feeds: dict[str, np.ndarray], rel: float = 1e-5) -> None:
    """fp32: max abs error within `rel` of each output's scale."""
    for i, (a, b) in enumerate(zip(run(original, feeds), run(folded, feeds), strict=True)):
        scale = max(float(np.abs(a).max()), 1e-30)
        err = float(np.abs(a - b).max())
        assert err <= rel * scale, \
            f"output {i}: max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


def replace_initializer(m: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Give the initializer `name` of `m` a new value (float32)."""
    for init in m.graph.initializer:
        if init.name == name:
            init.CopyFrom(const(name, value))
            return
    raise KeyError(name)


def zero_one_scale(m: onnx.ModelProto, channel: int, name: str = "norm.scale") -> None:
    """Set one channel of a norm's scale to 0: a fold that divides by it must refuse."""
    scale = next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == name).copy()
    scale[channel] = 0.0
    replace_initializer(m, name, scale)
