"""Keeping the weights where they are while the fold works. The rules work on
onnx-graphsurgeon's view of the graph; here the model's parts (`unfold.model_parts`) become
that view and back without copying the weights:

- a weight is read without being cached (`constant_value`): the TensorProto keeps it;
- shapes are re-inferred on a weightless copy of the graph (its large constants as typed
  inputs), never on an export of the whole model;
- the result is parts again: the untouched weights the same TensorProtos, the new ones numpy
  arrays.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from unfold.model_parts import (
    SMALL_INITIALIZER_BYTES,
    ModelParts,
    Weight,
    is_small,
    take_interface,
    weightless_model,
)


def import_parts(parts: ModelParts) -> gs.Graph:
    """The onnx-graphsurgeon graph of `parts`, its large weights gs.Constants over the given
    TensorProtos (read lazily, never copied) or arrays. Takes the weights out of `parts`."""
    weights, parts.weights = parts.weights, {}
    graph = gs.import_onnx(weightless_model(ModelParts(parts.skeleton, weights)))
    constants = {}
    for name, weight in weights.items():
        if not is_small(weight):
            constants[name] = gs.Constant(name, LazyValues(weight) if isinstance(
                weight, onnx.TensorProto) else weight)
    del weights
    for node in graph.nodes:
        for slot, tensor in enumerate(node.inputs):
            if tensor.name in constants:
                node.inputs[slot] = constants[tensor.name]
    graph.outputs = [constants.get(t.name, t) for t in graph.outputs]
    graph.inputs = [t for t in graph.inputs if t.name not in constants]
    return graph


def parts_of(graph: gs.Graph, like: ModelParts) -> ModelParts:
    """`graph` as ModelParts with the metadata of `like`: untouched weights are the same
    TensorProtos, the ones the fold made numpy arrays (the graph is spent afterwards)."""
    proto, weight_names = export_weightless(graph, like.skeleton)
    weights: dict[str, Weight] = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in weight_names:
            values = tensor._values  # noqa: SLF001 - LazyValues: still the given TensorProto
            weights[tensor.name] = values.tensor if isinstance(values, LazyValues) \
                else np.asarray(values)
    for small in proto.graph.initializer:
        weights[small.name] = small
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(like.skeleton)
    take_interface(skeleton.graph, proto.graph, leave_out=weight_names)
    return ModelParts(skeleton, weights)


def _nbytes(constant: gs.Constant) -> int:
    values = constant._values  # noqa: SLF001 - reading .values would load and cache them
    return int(values.nbytes)


def _weightless_graph(graph: gs.Graph) -> tuple[gs.Graph, set[str]]:
    """A copy of `graph` whose large constants are graph inputs (names returned)."""
    light = graph.copy()
    placeholders: dict[str, gs.Variable] = {}
    for node in light.nodes:
        for slot, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant) and _nbytes(tensor) > SMALL_INITIALIZER_BYTES:
                if tensor.name not in placeholders:
                    placeholders[tensor.name] = gs.Variable(tensor.name, dtype=tensor.dtype,
                                                            shape=list(tensor.shape))
                node.inputs[slot] = placeholders[tensor.name]
    light.inputs = list(light.inputs) + list(placeholders.values())
    return light, set(placeholders)


def export_weightless(graph: gs.Graph, like: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """`graph` as a ModelProto without its large constants (typed inputs instead, named in
    the set), with the opsets and IR version of `like`."""
    light, weight_names = _weightless_graph(graph)
    proto = gs.export_onnx(light, do_type_check=False)
    proto.ir_version = like.ir_version
    del proto.opset_import[:]
    proto.opset_import.extend(like.opset_import)
    for node in proto.graph.node:  # ops of other domains under their own names again (the
        # fold hides them, model._hide_foreign_ops), so shape inference finds their functions
        prefix = f"{node.domain}:"
        if node.domain not in ("", "ai.onnx") and node.op_type.startswith(prefix):
            node.op_type = node.op_type[len(prefix):]
    return proto, weight_names


def infer_shapes(graph: gs.Graph, like: onnx.ModelProto) -> None:
    """Re-infer every intermediate shape of `graph` in place (exporters leave stale or
    shapeless value_info entries; folding constants makes shapes static).

    Where the graph's inputs have dynamic dims, ONNX's symbolic inference loses much of what
    the Shape arithmetic of a dynamic export computes (a token count behind a Reshape to
    (-1, C, H, W) becomes "unk__3"). So shapes are also inferred twice with every dynamic input
    dim set to a number (PROBES): a dim equal in both is static; one that differs is named
    after the input dims it follows ("batch", "batch*2") or by its two values; names repeat
    only for dims that are equal, as the fold's reshape matching needs."""
    proto, _ = export_weightless(graph, like)
    del proto.graph.value_info[:]  # gs exports the shapes it has: infer them afresh
    symbolic = _shapes(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    probed = _probe_shapes(proto)
    tensors = graph.tensors()
    for name, (dims, dtype) in symbolic.items():
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Variable):
            continue
        if probed is not None and name in probed[0] and name in probed[1]:
            dims = _combine(dims, probed[0][name][0], probed[1][name][0], probed[2])
        tensor.shape = dims
        tensor.dtype = dtype


# the values dynamic input dims take in the two probing inferences: primes, so a dim derived
# from one (a product, a multiple) is told apart from a static one and from other dims
PROBES = ((7, 13), (11, 17), (19, 29), (23, 31), (37, 41), (43, 47))


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[list, np.dtype]]:
    out = {}
    for info in list(model.graph.value_info) + list(model.graph.output):
        if info.type.tensor_type.HasField("shape"):
            out[info.name] = ([d.dim_value if d.HasField("dim_value") else
                               (d.dim_param or None) for d in info.type.tensor_type.shape.dim],
                              onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
    return out


def _probe_shapes(proto: onnx.ModelProto):
    """(shapes with the dynamic input dims at their first probe values, at their second, and
    {symbol: (first, second)}), or None when the inputs have no dynamic dim or inference at
    numbers fails (a reshape the numbers do not divide)."""
    symbols: dict[str, tuple[int, int]] = {}
    for info in proto.graph.input:
        for index, dim in enumerate(info.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                name = dim.dim_param or f"{info.name}:{index}"
                if name not in symbols:
                    if len(symbols) == len(PROBES):
                        return None
                    symbols[name] = PROBES[len(symbols)]
    if not symbols:
        return None
    results = []
    for which in (0, 1):
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        for info in probe.graph.input:
            for index, dim in enumerate(info.type.tensor_type.shape.dim):
                if not dim.HasField("dim_value"):
                    value = symbols[dim.dim_param or f"{info.name}:{index}"][which]
                    dim.Clear()
                    dim.dim_value = value
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True, strict_mode=True)
        except Exception:  # noqa: BLE001 - the numbers do not fit the model: no probing
            return None
        results.append(_shapes(inferred))
    return results[0], results[1], symbols


def _combine(dims: list, first: list, second: list, symbols: dict[str, tuple[int, int]]) -> list:
    if len(first) != len(dims) or len(second) != len(dims):
        return dims
    out = []
    for dim, a, b in zip(dims, first, second, strict=True):
        if not isinstance(a, int) or not isinstance(b, int) or a <= 0 or b <= 0:
            out.append(dim)
        elif a == b:
            out.append(a)
        else:
            out.append(_named(a, b, symbols, dim))
    return out


def _named(a: int, b: int, symbols: dict[str, tuple[int, int]], fallback) -> str:
    for name, (p, q) in symbols.items():
        if a == p and b == q:
            return name
        if a % p == 0 and b % q == 0 and a // p == b // q:
            return f"{name}*{a // p}"
    return f"dynamic_{a}_{b}"
