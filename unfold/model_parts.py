"""An ONNX model with its weights apart (`ModelParts`): the container that reading and
writing files (`unfold.onnx_files`), the fold (`unfold.fold`), precision conversion and
TensorRT's build all hold a model in. It sits below all of them; what only the fold needs (the
graphsurgeon view, shape inference) is in `unfold.fold.weights`.

A ViT-B or BERT-base carries 330-420 MiB of weights, and copying them all (an export to a new
ModelProto, a re-import, numpy copies of every weight read) cost 7-8x the weights in memory.
So a model is its skeleton and its weights apart, each a TensorProto of its own when read from
a file (`onnx_files.read_parts`), so that one a step replaces is freed (inside one ModelProto,
upb frees no weight before the whole model); new weights are numpy arrays, turned into
TensorProtos one at a time as they are written (or moved into a ModelProto by
`ModelParts.into` / `to_model`). `weightless_model` is the graph with its large constants as
typed inputs: what shape inference and the checker need.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper

from unfold.errors import UnfoldError

# Initializers up to this size stay in the weightless copy (shape data such as Reshape targets
# must stay visible to data propagation); larger ones become typed inputs.
SMALL_INITIALIZER_BYTES = 4096


def proto_nbytes(tensor: onnx.TensorProto) -> int:
    """Size of an initializer's values from its dims and type (reading raw_data copies it)."""
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def without_field(message, skip: str):
    """A copy of the protobuf `message` without its field `skip` (which is not copied at all)."""
    shell = type(message)()
    for field, value in message.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(shell, field.name).extend(value)
        elif field.message_type is not None:
            getattr(shell, field.name).CopyFrom(value)
        else:
            setattr(shell, field.name, value)
    return shell


Weight = onnx.TensorProto | np.ndarray


def weight_nbytes(weight: Weight) -> int:
    return int(weight.nbytes) if isinstance(weight, np.ndarray) else proto_nbytes(weight)


def weight_header(weight: Weight) -> tuple[int, list[int]]:
    """(ONNX data type, dims) of a weight, without reading its values."""
    if isinstance(weight, np.ndarray):
        return onnx.helper.np_dtype_to_tensor_dtype(weight.dtype), list(weight.shape)
    return weight.data_type, list(weight.dims)


def array_bytes(array: np.ndarray) -> bytes:
    """An array's values as a TensorProto's raw_data holds them: little-endian, row-major."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def weight_proto(name: str, weight: Weight) -> onnx.TensorProto:
    """`weight` as a TensorProto named `name` (an array is copied into a new one, and so is a
    TensorProto of another name: the value of a Constant node the fold made an initializer)."""
    if isinstance(weight, onnx.TensorProto):
        if weight.name == name:
            return weight
        renamed = onnx.TensorProto()
        renamed.CopyFrom(weight)
        renamed.name = name
        return renamed
    return onnx.numpy_helper.from_array(np.ascontiguousarray(weight), name)


@dataclass
class ModelParts:
    """An ONNX model with its weights apart. `skeleton` is the ModelProto without
    initializers; `weights` maps every initializer's name to its TensorProto, or to a numpy
    array the fold made. A TensorProto parsed on its own (`onnx_files.read_parts`) owns its
    memory: one the fold replaces is freed then. Inside a ModelProto it would not be: upb keeps
    every message of a model in one arena until the whole model goes."""

    skeleton: onnx.ModelProto
    weights: dict[str, Weight]
    # the files it was read from (the model, its external data): never to be written over
    sources: frozenset = frozenset()

    @classmethod
    def viewing(cls, model: onnx.ModelProto) -> ModelParts:
        """The parts of `model`, its weights not copied (they stay in `model`)."""
        skeleton = without_field(model, "graph")
        if model.HasField("graph"):
            skeleton.graph.CopyFrom(without_field(model.graph, "initializer"))
        weights: dict[str, Weight] = {}
        for tensor in model.graph.initializer:
            if tensor.name in weights:
                raise duplicate_weight(tensor.name)
            weights[tensor.name] = tensor
        return cls(skeleton, weights)

    def to_model(self) -> onnx.ModelProto:
        """One ModelProto, the weights moved into it one at a time (`weights` ends empty)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.skeleton)
        for name in list(self.weights):
            _append(model.graph, name, self.weights.pop(name))
        return model

    def into(self, model: onnx.ModelProto) -> None:
        """Make `model` these parts, in place: the weights it holds already stay where they
        are, the others are added one at a time (`weights` ends empty)."""
        held = {id(t) for t in model.graph.initializer}
        kept = {name for name, w in self.weights.items() if id(w) in held}
        target = model.graph
        # drop what the fold no longer reads, from the back so the indices stay valid
        for index in reversed(range(len(target.initializer))):
            if target.initializer[index].name not in kept:
                del target.initializer[index]
        for name in [n for n in self.weights if n not in kept]:
            _append(target, name, self.weights.pop(name))
        self.weights.clear()
        take_interface(target, self.skeleton.graph)


def duplicate_weight(name: str) -> UnfoldError:
    """The error for a graph with two initializers of one name: which one a reader gets is
    up to the runtime (ONNX Runtime and a fold could each take another)."""
    return UnfoldError(f"the model has two initializers named {name!r}: which one a node "
                       f"reads is undefined; give each initializer a name of its own")


def take_interface(target: onnx.GraphProto, source: onnx.GraphProto,
                    leave_out: Set[str] = frozenset()) -> None:
    """target's nodes, inputs (but those named in `leave_out`), outputs and value_info
    become source's."""
    for field in ("node", "input", "output", "value_info"):
        del getattr(target, field)[:]
        getattr(target, field).extend(item for item in getattr(source, field)
                                      if field != "input" or item.name not in leave_out)


def _append(graph: onnx.GraphProto, name: str, weight: Weight) -> None:
    """Add `weight` to the graph's initializers: an array's bytes straight into the model's
    message (no TensorProto of its own first: one copy fewer)."""
    if isinstance(weight, onnx.TensorProto) or weight.dtype.kind not in "biufc":
        graph.initializer.append(weight_proto(name, weight))
        return
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type, dims = weight_header(weight)
    tensor.dims.extend(dims)
    tensor.raw_data = array_bytes(weight)


def weightless_model(model: onnx.ModelProto | ModelParts) -> onnx.ModelProto:
    """The same graph with its large initializers replaced by graph inputs of the same type
    and shape: what shape inference and the checker need, without copying the weights."""
    parts = model if isinstance(model, ModelParts) else ModelParts.viewing(model)
    graph = parts.skeleton.graph
    small = [weight_proto(name, w) for name, w in parts.weights.items() if is_small(w)]
    small_names = {t.name for t in small}
    weights = [onnx.helper.make_tensor_value_info(name, *weight_header(w))
               for name, w in parts.weights.items() if name not in small_names]
    twin = onnx.helper.make_graph(list(graph.node), graph.name, list(graph.input) + weights,
                                  list(graph.output), small)
    light = onnx.helper.make_model(twin, opset_imports=list(parts.skeleton.opset_import))
    light.ir_version = parts.skeleton.ir_version
    light.functions.extend(parts.skeleton.functions)
    return light


def is_small(weight: Weight) -> bool:
    if isinstance(weight, onnx.TensorProto) and \
            weight.data_location == onnx.TensorProto.EXTERNAL:
        return False
    return weight_nbytes(weight) <= SMALL_INITIALIZER_BYTES


# Work whose size comes only from what a model declares (a static input of 2^29 elements, a
# ConstantOfShape of a constant shape) is refused past this, or past 4x the model's weights if
# that is more: shape inference with data propagation and constant folding would otherwise
# materialize it (a 172-byte model drove a fold to the OOM killer).
DECLARED_FLOOR_BYTES = 1 << 30
DECLARED_WEIGHT_FACTOR = 4
_CREATORS = {"ConstantOfShape": 0, "Expand": 1}  # op -> the input that holds the shape


def declared_size_problem(parts: ModelParts) -> str | None:
    """What makes the model declare more data than unfold will hold for it, or None."""
    weights = sum(weight_nbytes(w) for w in parts.weights.values())
    limit = max(DECLARED_FLOOR_BYTES, DECLARED_WEIGHT_FACTOR * weights)
    graph = parts.skeleton.graph

    def too_big(what: str, dims: list[int], elem_type: int) -> str | None:
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        count = 1
        for dim in dims:
            count *= max(int(dim), 0)
        if count * itemsize <= limit:
            return None
        return (f"{what} declares {count} elements ({count * itemsize / 2**30:.1f} GiB), more "
                f"than unfold holds for a model of {weights} bytes of weights (the limit is "
                f"{limit / 2**30:.1f} GiB: {DECLARED_WEIGHT_FACTOR}x the weights, at least "
                f"{DECLARED_FLOOR_BYTES / 2**30:.0f} GiB)")

    for kind, values in (("input", graph.input), ("output", graph.output),
                         ("tensor", graph.value_info)):
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value for d in tensor.shape.dim if d.HasField("dim_value")]
            if len(dims) == len(tensor.shape.dim):
                found = too_big(f"{kind} '{value.name}'", dims, tensor.elem_type)
                if found:
                    return found
    constants = dict(parts.weights)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    constants[node.output[0]] = attr.t
    for node in graph.node:
        slot = _CREATORS.get(node.op_type)
        if slot is None or len(node.input) <= slot or node.input[slot] not in constants:
            continue
        shape = constants[node.input[slot]]
        if weight_nbytes(shape) > 1024:
            continue  # not a shape
        values = shape if isinstance(shape, np.ndarray) else onnx.numpy_helper.to_array(shape)
        found = too_big(f"{node.op_type} '{node.name or node.output[0]}'",
                        [int(v) for v in np.asarray(values).reshape(-1)], onnx.TensorProto.FLOAT)
        if found:
            return found
    return None


def graph_problem(parts: ModelParts, *, folding: bool = True) -> str | None:
    """What makes the graph one unfold must not take, or None: nodes that share a name (ONNX
    Runtime refuses such a graph, and would refuse what the fold writes), and, for a fold,
    initializers that are also graph inputs (a caller may feed them: a fold that bakes them
    into other weights would change what feeding them means)."""
    graph = parts.skeleton.graph
    seen: set[str] = set()
    for node in graph.node:
        if node.name and node.name in seen:
            shared = sum(n.name == node.name for n in graph.node)
            return (f"{shared} nodes share the name {node.name!r} (ONNX Runtime refuses such "
                    f"a graph); give each node a name of its own")
        seen.add(node.name)
    overridable = [i.name for i in graph.input if i.name in parts.weights] if folding else []
    if overridable:
        listed = ", ".join(repr(n) for n in overridable[:3]) + (
            f" and {len(overridable) - 3} more" if len(overridable) > 3 else "")
        return (f"the initializers {listed} are also graph inputs, so a caller may feed other "
                f"values for them, which a fold would bake into other weights: export with "
                f"torch.onnx.export(..., keep_initializers_as_inputs=False) (the default), or "
                f"drop them from the graph's inputs")
    return None
