"""Keeping the weights where they are. The rules work on onnx-graphsurgeon's view of the graph,
but a ViT-B or BERT-base carries 330-420 MiB of weights and the fold touches about half of
them; copying them all (an export to a new ModelProto, a re-import, numpy copies of every
weight read) cost 7-8x the weights in memory. Here instead:

- a weight is read without being cached (`constant_value`): the TensorProto keeps it;
- shapes are re-inferred on a weightless copy of the graph (its large constants as typed
  inputs), never on an export of the whole model;
- the result is written back into the model the graph came from: its node list is replaced,
  the initializers the fold no longer uses are dropped, the weights it made are added one by
  one, and every untouched weight stays in its TensorProto.
"""

from __future__ import annotations

import gc

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

# Initializers up to this size stay in the weightless copy (shape data such as Reshape targets
# must stay visible to data propagation); larger ones become typed inputs.
SMALL_INITIALIZER_BYTES = 4096


def proto_nbytes(tensor: onnx.TensorProto) -> int:
    """Size of an initializer's values from its dims and type (reading raw_data copies it)."""
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def weightless_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its large initializers replaced by graph inputs of the same type
    and shape: what shape inference and the checker need, without copying the weights."""
    graph = model.graph
    small = [t for t in graph.initializer if proto_nbytes(t) <= SMALL_INITIALIZER_BYTES
             and t.data_location != onnx.TensorProto.EXTERNAL]
    small_names = {t.name for t in small}
    weights = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
               for t in graph.initializer if t.name not in small_names]
    twin = onnx.helper.make_graph(list(graph.node), graph.name, list(graph.input) + weights,
                                  list(graph.output), small)
    light = onnx.helper.make_model(twin, opset_imports=list(model.opset_import))
    light.ir_version = model.ir_version
    return light


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
    return proto, weight_names


def infer_shapes(graph: gs.Graph, like: onnx.ModelProto) -> None:
    """Re-infer every intermediate shape of `graph` in place (exporters leave stale or
    shapeless value_info entries; folding constants makes shapes static)."""
    proto, _ = export_weightless(graph, like)
    del proto.graph.value_info[:]  # gs exports the shapes it has: infer them afresh
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    tensors = graph.tensors()
    for info in inferred.graph.value_info:
        tensor = tensors.get(info.name)
        if isinstance(tensor, gs.Variable) and info.type.tensor_type.HasField("shape"):
            tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in info.type.tensor_type.shape.dim]
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)


def write_back(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Make `model` the folded `graph`, in place (see the module's docstring). The weights the
    fold made move out of `graph` as they are written: it is spent afterwards."""
    proto, weight_names = export_weightless(graph, model)
    constants = {t.name: t for t in graph.tensors().values()
                 if isinstance(t, gs.Constant) and t.name in weight_names}
    originals = {id(t) for t in model.graph.initializer}
    kept: set[str] = set()
    for name, constant in constants.items():
        values = constant._values  # noqa: SLF001 - LazyValues: still the model's TensorProto
        if isinstance(values, LazyValues) and id(values.tensor) in originals:
            kept.add(name)
    target = model.graph
    # drop what the fold no longer reads, from the back so the indices stay valid
    for index in reversed(range(len(target.initializer))):
        if target.initializer[index].name not in kept:
            del target.initializer[index]
    constants = {n: c for n, c in constants.items() if n not in kept}
    gc.collect()  # weights made and replaced again during the fold (gs graphs hold cycles)
    for name, constant in constants.items():
        array = np.ascontiguousarray(constant.values)
        tensor = target.initializer.add()
        tensor.name = name
        tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.tobytes()
        constant.values = np.empty(0, dtype=array.dtype)  # written: let the array go
        del array
    # the small constants, the nodes and the graph's interface from the weightless export
    target.initializer.extend(proto.graph.initializer)
    for field in ("node", "input", "output", "value_info"):
        del getattr(target, field)[:]
    target.node.extend(proto.graph.node)
    target.input.extend(i for i in proto.graph.input if i.name not in weight_names)
    target.output.extend(proto.graph.output)
    target.value_info.extend(proto.graph.value_info)
