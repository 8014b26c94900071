"""Keeping the weights where they are. The rules work on onnx-graphsurgeon's view of the graph,
but a ViT-B or BERT-base carries 330-420 MiB of weights and the fold touches about half of
them (a post-norm model nearly all); copying them all (an export to a new ModelProto, a
re-import, numpy copies of every weight read) cost 7-8x the weights in memory. Here instead:

- a model is `ModelParts`: its skeleton, and its weights apart, each a TensorProto of its own
  when read from a file (`onnx_files.read_parts`), so that one the fold replaces is freed
  (inside one ModelProto, upb frees no weight before the whole model);
- a weight is read without being cached (`constant_value`): the TensorProto keeps it;
- shapes are re-inferred on a weightless copy of the graph (its large constants as typed
  inputs), never on an export of the whole model;
- the result is parts again: the untouched weights the same TensorProtos, the new ones numpy
  arrays, turned into TensorProtos one at a time as they are written (or moved into a
  ModelProto by `ModelParts.into` / `to_model`, for `fold_model`).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

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
        _take_interface(target, self.skeleton.graph)


def duplicate_weight(name: str) -> UnfoldError:
    """The error for a graph with two initializers of one name: which one a reader gets is
    up to the runtime (ONNX Runtime and a fold could each take another)."""
    return UnfoldError(f"the model has two initializers named {name!r}: which one a node "
                       f"reads is undefined; give each initializer a name of its own")


def _take_interface(target: onnx.GraphProto, source: onnx.GraphProto,
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
    small = [weight_proto(name, w) for name, w in parts.weights.items() if _is_small(w)]
    small_names = {t.name for t in small}
    weights = [onnx.helper.make_tensor_value_info(name, *weight_header(w))
               for name, w in parts.weights.items() if name not in small_names]
    twin = onnx.helper.make_graph(list(graph.node), graph.name, list(graph.input) + weights,
                                  list(graph.output), small)
    light = onnx.helper.make_model(twin, opset_imports=list(parts.skeleton.opset_import))
    light.ir_version = parts.skeleton.ir_version
    light.functions.extend(parts.skeleton.functions)
    return light


def _is_small(weight: Weight) -> bool:
    if isinstance(weight, onnx.TensorProto) and \
            weight.data_location == onnx.TensorProto.EXTERNAL:
        return False
    return weight_nbytes(weight) <= SMALL_INITIALIZER_BYTES


def import_parts(parts: ModelParts) -> gs.Graph:
    """The onnx-graphsurgeon graph of `parts`, its large weights gs.Constants over the given
    TensorProtos (read lazily, never copied) or arrays. Takes the weights out of `parts`."""
    weights, parts.weights = parts.weights, {}
    graph = gs.import_onnx(weightless_model(ModelParts(parts.skeleton, weights)))
    constants = {}
    for name, weight in weights.items():
        if not _is_small(weight):
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
    _take_interface(skeleton.graph, proto.graph, leave_out=weight_names)
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
