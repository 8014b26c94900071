"""Tiny ONNX models for the fold tests, and the checks every fold test makes."""

from __future__ import annotations

from collections import Counter

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


def post_norm_stack(blocks: int, channels: int, norm: bool = True) -> onnx.ModelProto:
    """`blocks` post-norm blocks, h = norm(h + fc(h)), every norm's scale ~0.3 (and its shift
    small): the stream's carried scale is 0.3^k after k blocks, its values 1/0.3^k times the
    true ones, and each branch's bias c becomes (c + b)/0.3^k."""
    nodes, inits = [], []
    h = "x"
    for i in range(blocks):
        p = f"b{i}"
        nodes += [helper.make_node("MatMul", [h, f"{p}.W"], [f"{p}_m"], name=f"{p}_fc"),
                  helper.make_node("Add", [f"{p}_m", f"{p}.c"], [f"{p}_f"], name=f"{p}_fc_bias"),
                  helper.make_node("Add", [h, f"{p}_f"], [f"{p}_r"], name=f"{p}_residual")]
        inits += [const(f"{p}.W", RNG.normal(size=(channels, channels)) / 3),
                  const(f"{p}.c", RNG.normal(size=channels))]
        h = f"{p}_r"
        if norm:
            nodes += [helper.make_node("Mul", [h, f"{p}.s"], [f"{p}_s"], name=f"{p}_norm_mul"),
                      helper.make_node("Add", [f"{p}_s", f"{p}.b"], [f"{p}_out"],
                                       name=f"{p}_norm_add")]
            inits += [const(f"{p}.s", 0.3 * RNG.uniform(0.9, 1.1, channels)),
                      const(f"{p}.b", 0.05 * RNG.normal(size=channels))]
            h = f"{p}_out"
    nodes += [helper.make_node("MatMul", [h, "Wh"], ["mh"], name="head"),
              helper.make_node("Add", ["mh", "ch"], ["y"], name="head_bias")]
    inits += [const("Wh", RNG.normal(size=(channels, 3))), const("ch", RNG.normal(size=3))]
    return model(nodes, inits, {"x": ["N", 5, channels]}, {"y": ["N", 5, 3]})


# --- what a pending affine leaves at a model's outputs (the twin checks of tests/fold and
# tests/zoo: a Mul and an Add materialized at an output are allowed beyond the twin)

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def at_outputs(model: onnx.ModelProto) -> list[Counter[str]]:
    """Per graph output, the Mul/Add/Sub/Div by a constant that end the path to it (an
    affine materialized at that output, and the head's own bias Add)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for output in model.graph.output:
        ops: Counter[str] = Counter()
        node = producer.get(output.name)
        while node is not None and node.op_type in AFFINE_OPS:
            variable = [i for i in node.input if i not in constants]
            if len(variable) != 1 or len(node.input) != 2:
                break
            ops[node.op_type] += 1
            node = producer.get(variable[0])
        found.append(ops)
    return found


def materialized(folded: onnx.ModelProto, twin: onnx.ModelProto) -> Counter[str]:
    """What the folded model has more than its twin at its outputs, at most one Mul and one
    Add per output: a pending affine materialized there (allowed)."""
    allowed: Counter[str] = Counter()
    for f, t in zip(at_outputs(folded), at_outputs(twin), strict=True):
        for op in ("Mul", "Add"):
            allowed[op] += min(1, max(0, f[op] - t[op]))
    return allowed
