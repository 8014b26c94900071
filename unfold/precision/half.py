"""An fp32 graph in fp16 or bf16: weights stored and compute done in the half type, the model's
inputs and outputs in the types it declares (a Cast after each float input, before each float
output), and the nodes that must stay fp32 kept so, each with its reason.

Why written here rather than taken: TensorRT 11's migration guide points to NVIDIA ModelOpt's
AutoCast, whose `onnx` extra pins onnx 1.21 and onnxruntime-gpu 1.24 (this project runs onnx
1.23 and onnxruntime 1.32) and pulls cupy; ONNX Runtime's own `float16` converter (and
onnxconverter-common's, its origin) writes fp16 only, not bf16, and knows nothing of the range
check before it. The conversion is small once the graph's types are known:

* every node of the default ONNX domain converts, unless it is kept (`keep_reason`): an op
  that computes statistics online (LayerNormalization and its kind: its variance overflows
  fp16 long before its output does), a node holding subgraphs or of another domain (its type
  rules are not ONNX's), a node whose tensor types shape inference does not know, a node that
  reads a mask's float32 extreme (`extreme_constants`), or a node that reads or writes an
  activation past `ACTIVATION_LIMITS` on the measured inputs;
* a float tensor is half where it is produced by a converted node, or is an initializer that
  only converted nodes read; a Cast joins it to each reader that wants the other type (one
  Cast per tensor and type, shared);
* inputs that ONNX types as float whatever the op's T (Resize's scales) stay fp32;
* the type a converted node writes by attribute follows (Cast's `to`, ConstantOfShape's and
  Constant's value).

A float weight past the half type's largest value is refused, naming it: it is the fold's to
bound (`--max-scale`), not the converter's to hide in fp32. Weights that fp16 keeps only as
subnormals or zeros are counted in the report (`ranges.fp16_range_report` names them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper

from unfold.errors import UnfoldError, option
from unfold.model_parts import ModelParts, Weight, is_small, weight_nbytes, weightless_model
from unfold.numerics import BF16_MAX, FP16_MAX
from unfold.precision import PRECISIONS

HALF_TYPES = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
HALF_DTYPES = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
LARGEST = {"fp16": FP16_MAX, "bf16": BF16_MAX}
FLOAT = onnx.TensorProto.FLOAT

# a node stays fp32 when a tensor it reads or writes reaches 1/16 of the type's largest value
# on the measured inputs: headroom for inputs larger than the ones measured
ACTIVATION_LIMIT = FP16_MAX / 16
ACTIVATION_LIMITS = {"fp16": ACTIVATION_LIMIT, "bf16": BF16_MAX / 16}
# float32's extreme, what attention masks add for "minus infinity" (transformers'
# torch.finfo(dtype).min): neither half type holds it (bf16's largest is 3.39e38)
FP32_EXTREME = float(np.finfo(np.float32).max)

# ops that compute statistics of their input online: their sums of squares leave fp16's range
# long before their outputs do (TensorRT #2564, #3657, #4540: LayerNorm is what fp16 breaks)
ONLINE_STATISTICS = frozenset({"LayerNormalization", "GroupNormalization",
                               "InstanceNormalization", "RMSNormalization", "LpNormalization",
                               "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp"})
# ops whose output type is an attribute that is not the input's: kept (rare in inference)
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "EyeLike"})
# (op, input index) that ONNX types tensor(float) whatever the op's T
FLOAT_ONLY_INPUTS = frozenset({("Resize", 2), ("Upsample", 1)})
_DEFAULT_DOMAINS = ("", "ai.onnx")


def check_precision(precision: Any, *, parameter: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise UnfoldError(f"{option(parameter, precision)}: expected one of "
                          f"{', '.join(PRECISIONS)} (the graph converted to that type; fp32 is "
                          f"the model as it is)")
    return str(precision)


@dataclass(frozen=True)
class KeptNode:
    """A node that stays fp32 in the half graph, and why."""

    name: str
    op: str
    reason: str

    def describe(self) -> str:
        return f"{self.op} {self.name!r}: {self.reason}"


@dataclass
class HalfReport:
    """What `to_half` did: which precision each node and tensor got."""

    precision: str
    converted_nodes: int = 0
    kept: list[KeptNode] = field(default_factory=list)
    casts: int = 0  # Cast nodes added (at the model's edges and around kept nodes)
    tensors: dict[str, int] = field(default_factory=dict)  # float tensors per type
    weights_converted: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    measured: bool = False  # activation ranges were measured on inputs (fp16)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "converted_nodes": self.converted_nodes,
                "kept_fp32": [vars(k) for k in self.kept], "casts": self.casts,
                "tensors": dict(self.tensors), "weights_converted": self.weights_converted,
                "weight_bytes_before": self.weight_bytes_before,
                "weight_bytes_after": self.weight_bytes_after,
                "activations_measured": self.measured}

    def describe(self) -> str:
        """`fp16: 120 nodes, 2 kept fp32 (...), 4 Casts, weights 1.2 MiB -> 0.6 MiB`."""
        kept = "none kept fp32" if not self.kept else \
            f"{len(self.kept)} kept fp32 ({'; '.join(k.describe() for k in self.kept[:5])}" \
            f"{'; ...' if len(self.kept) > 5 else ''})"
        return (f"{self.precision}: {self.converted_nodes} nodes converted, {kept}, "
                f"{self.casts} Casts added, weights {self.weight_bytes_before / 2**20:.2f} MiB "
                f"-> {self.weight_bytes_after / 2**20:.2f} MiB")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Every tensor's element type that shape inference finds (inputs, initializers,
    intermediates, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in graph.node:  # (Constant outputs shape inference may leave out)
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    types.setdefault(node.output[0], attr.t.data_type)
                elif attr.name in ("value_float", "value_floats"):
                    types.setdefault(node.output[0], FLOAT)
    return types


def _schema_refuses(node: onnx.NodeProto, types: Mapping[str, int], opset: int,
                    precision: str) -> str | None:
    """Why ONNX's own schema of `node` (at the model's opset) cannot take the half type on
    one of its float inputs (e.g. Conv takes bfloat16 from opset 22 only), or None."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"ONNX has no {node.op_type} at opset {opset}"
    half = onnx.helper.tensor_dtype_to_string(HALF_TYPES[precision]).removeprefix(
        "TensorProto.").lower()
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    formal = list(schema.inputs)
    for slot, tensor in enumerate(node.input):
        if not tensor or types.get(tensor) != FLOAT or (node.op_type, slot) in FLOAT_ONLY_INPUTS:
            continue
        spec = formal[min(slot, len(formal) - 1)] if formal else None
        if spec is None:
            continue
        types_allowed = allowed.get(spec.type_str)
        if types_allowed is not None and f"tensor({half})" not in types_allowed:
            return f"ONNX opset {opset}'s {node.op_type} does not take {half}"
    return None


def keep_reason(node: onnx.NodeProto, types: Mapping[str, int],
                ranges: Mapping[str, float] | None, precision: str, opset: int,
                sentinels: Mapping[str, float]) -> str | None:
    """Why `node` stays fp32 in the half graph, or None where it converts."""
    if node.domain not in _DEFAULT_DOMAINS:
        return f"an op of the domain {node.domain!r}, whose type rules unfold does not know"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for a in node.attribute):
        return "it holds subgraphs"
    if node.op_type in ONLINE_STATISTICS:
        return ("it computes statistics online (a mean and variance per token: what fp16 "
                "overflows first)")
    if node.op_type in _RANDOM:
        return "its output type is an attribute"
    untyped = _schema_refuses(node, types, opset, precision)
    if untyped is not None:
        return untyped
    for tensor in [*node.input, *(node.output if node.op_type == "Constant" else ())]:
        if tensor in sentinels:
            return (f"{tensor!r} holds float32's extreme {sentinels[tensor]:.4g} (an attention "
                    f"mask's 'minus infinity'), past {precision}'s largest "
                    f"{LARGEST[precision]:.6g}")
    tensors = [t for t in [*node.input, *node.output] if t]
    unknown = [t for t in tensors if t not in types]
    if unknown:
        return f"the type of {unknown[0]!r} is unknown to shape inference"
    if ranges is not None:
        limit = ACTIVATION_LIMITS[precision]
        for tensor in tensors:
            if types[tensor] == FLOAT and ranges.get(tensor, 0.0) > limit:
                return (f"{tensor!r} reaches {ranges[tensor]:.3g} on the measured inputs "
                        f"({precision}'s largest is {LARGEST[precision]:.6g}; kept above "
                        f"{limit:.4g})")
    return None


def extreme_constants(parts: ModelParts, types: Mapping[str, int], precision: str
                      ) -> dict[str, float]:
    """The small float constants (initializers and Constant nodes) whose values past the half
    type's range are all float32's extreme or infinite: attention masks' "minus infinity",
    not learned weights. Their readers stay fp32; any other weight past the range is refused."""
    found: dict[str, float] = {}

    def check(name: str, values: np.ndarray) -> None:
        magnitude = np.abs(values.astype(np.float64))
        over = magnitude[magnitude > LARGEST[precision]]
        if over.size and np.all((over >= FP32_EXTREME) | np.isinf(over)):
            found[name] = float(values.reshape(-1)[np.argmax(magnitude.reshape(-1))])

    for name, weight in parts.weights.items():
        if types.get(name) == FLOAT and is_small(weight):
            check(name, _weight_array(weight))
    for node in parts.skeleton.graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    check(node.output[0], onnx.numpy_helper.to_array(attr.t))
    return found


def _weight_array(weight: Weight) -> np.ndarray:
    return onnx.numpy_helper.to_array(weight) if isinstance(weight, onnx.TensorProto) \
        else weight


def _half_array(name: str, values: np.ndarray, precision: str, what: str) -> np.ndarray:
    largest = float(np.abs(values).max()) if values.size else 0.0
    if largest > LARGEST[precision] or not np.isfinite(largest):
        bound = ("fold with --max-scale (a lower bound on how much the fold may grow a "
                 "weight), or use --precision bf16 (fp32's range)") if precision == "fp16" \
            else "the model is not representable in bf16"
        raise UnfoldError(f"{what} {name!r}: its largest |value| {largest:.4g} is past "
                          f"{precision}'s largest {LARGEST[precision]:.6g}: {bound}")
    return values.astype(HALF_DTYPES[precision])


def to_half(parts: ModelParts, precision: str, *, ranges: Mapping[str, float] | None = None
            ) -> tuple[ModelParts, HalfReport]:
    """`parts` (an fp32 model) converted to `precision` ("fp16" or "bf16"); `ranges` (from
    `unfold.precision.checked.measured_ranges`) keeps the nodes whose activations the type
    would not hold. The model's inputs and outputs keep their declared types. `parts` is left
    as it was."""
    precision = check_precision(precision)
    half = HALF_TYPES[precision]
    types = tensor_types(weightless_model(parts))
    graph = parts.skeleton.graph
    report = HalfReport(precision, measured=ranges is not None)
    sentinels = extreme_constants(parts, types, precision)
    opset = next((o.version for o in parts.skeleton.opset_import
                  if o.domain in _DEFAULT_DOMAINS), 1)
    taken = set(types) | set(parts.weights) | {i.name for i in graph.input} | \
        {t for node in graph.node for t in [*node.input, *node.output, node.name]}

    converted: set[int] = set()
    for index, node in enumerate(graph.node):
        reason = keep_reason(node, types, ranges, precision, opset, sentinels)
        if reason is None:
            converted.add(index)
        else:
            report.kept.append(KeptNode(node.name or f"#{index}", node.op_type, reason))
    report.converted_nodes = len(converted)

    def wants_half(index: int, node: onnx.NodeProto, slot: int, tensor: str) -> bool:
        return index in converted and types.get(tensor) == FLOAT and \
            (node.op_type, slot) not in FLOAT_ONLY_INPUTS

    # the type of each float tensor in the half graph
    readers: dict[str, list[bool]] = {}
    for index, node in enumerate(graph.node):
        for slot, tensor in enumerate(node.input):
            if tensor:
                readers.setdefault(tensor, []).append(wants_half(index, node, slot, tensor))
    outputs = {o.name for o in graph.output}
    now: dict[str, int] = {}
    weights: dict[str, Weight] = dict(parts.weights)
    for name, weight in parts.weights.items():
        if types.get(name) == FLOAT and all(readers.get(name, [False])) and name not in outputs:
            array = _weight_array(weight)
            report.weight_bytes_before += array.nbytes
            weights[name] = _half_array(name, array, precision, "initializer")
            report.weight_bytes_after += weights[name].nbytes
            report.weights_converted += 1
            now[name] = half
        elif types.get(name) in (FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                                 onnx.TensorProto.DOUBLE):
            size = weight_nbytes(weight)  # (from the header: nothing decoded)
            report.weight_bytes_before += size
            report.weight_bytes_after += size

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(parts.skeleton)
    new_graph = skeleton.graph
    del new_graph.node[:]
    del new_graph.value_info[:]  # (stale types; inference finds them again)
    renamed: dict[str, str] = {}  # a float graph output a converted node writes -> its half name
    for index, node in enumerate(graph.node):
        if index in converted:
            for out in node.output:
                if out and types.get(out) == FLOAT:
                    now[out] = half
                    if out in outputs:
                        renamed[out] = _unique(f"{out}_{precision}", taken)

    casts: dict[tuple[str, int], str] = {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            casts[key] = _unique(f"{tensor}_to_{'fp32' if to == FLOAT else precision}", taken)
            new_graph.node.append(onnx.helper.make_node(
                "Cast", [tensor], [casts[key]], to=to,
                name=_unique(f"unfold_cast/{casts[key]}", taken)))
            report.casts += 1
        return casts[key]

    for index, original in enumerate(graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        for slot, tensor in enumerate(node.input):
            if not tensor or types.get(tensor) != FLOAT:
                continue
            has = now.get(tensor, FLOAT)
            want = half if wants_half(index, node, slot, tensor) else FLOAT
            if tensor in renamed:  # its fp32 form is the graph output's Cast: read that
                node.input[slot] = tensor if want == FLOAT else renamed[tensor]
            else:
                node.input[slot] = tensor if has == want else cast(tensor, want)
        for slot, out in enumerate(node.output):
            if out in renamed:
                node.output[slot] = renamed[out]
        if index in converted:
            _convert_attributes(node, precision)
        new_graph.node.append(node)
        for out in original.output:  # a float output written in the half type, cast back
            if out in renamed:
                new_graph.node.append(onnx.helper.make_node(
                    "Cast", [renamed[out]], [out], to=FLOAT,
                    name=_unique(f"unfold_cast/{out}", taken)))
                report.casts += 1

    result = ModelParts(skeleton, weights)
    final = _tensor_types_or_fail(result, precision)
    for elem in final.values():
        if elem in (FLOAT, half):
            label = "fp32" if elem == FLOAT else precision
            report.tensors[label] = report.tensors.get(label, 0) + 1
    return result, report


def _tensor_types_or_fail(parts: ModelParts, precision: str) -> dict[str, int]:
    """The half graph's types, checked by ONNX's strict shape inference: a type clash here is
    the converter's defect, never a file to write."""
    light = weightless_model(parts)
    try:
        onnx.checker.check_model(light, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True)
    except Exception as exc:  # (onnx raises InferenceError and, for some ops, others)
        raise UnfoldError(f"the {precision} graph is not valid ONNX ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); nothing was "
                          f"written") from None
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.HasField("tensor_type")}


def _convert_attributes(node: onnx.NodeProto, precision: str) -> None:
    """A converted node's typed attributes: Cast to fp32 casts to the half type; a float
    Constant / ConstantOfShape value becomes one of the half type."""
    half = HALF_TYPES[precision]
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = half
        elif node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and \
                attr.t.data_type == FLOAT:
            values = onnx.numpy_helper.to_array(attr.t)
            attr.t.CopyFrom(_half_tensor(attr.t.name, values, precision, node))
    if node.op_type == "Constant":
        for attr in list(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats),
                                    dtype=np.float32)
                node.attribute.remove(attr)
                node.attribute.append(onnx.helper.make_attribute(
                    "value", _half_tensor("", values, precision, node)))


def _half_tensor(name: str, values: np.ndarray, precision: str,
                 node: onnx.NodeProto) -> onnx.TensorProto:
    converted = _half_array(node.name or node.output[0], values, precision,
                            f"the {node.op_type} value of")
    if precision == "fp16":
        return onnx.numpy_helper.from_array(converted, name)
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.BFLOAT16,
                              dims=list(converted.shape))
    tensor.raw_data = converted.view(np.uint16).tobytes()
    return tensor


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ...: the first not `taken` (then taken)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def tensor_precisions(model: onnx.ModelProto | ModelParts) -> dict[str, str]:
    """Each float tensor of `model` -> fp32 / fp16 / bf16 / fp64 (what a strongly typed
    TensorRT network gives it)."""
    names: dict[int, str] = {FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
             onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}
    parts = model if isinstance(model, ModelParts) else ModelParts.viewing(model)
    return {name: names[elem] for name, elem in tensor_types(weightless_model(parts)).items()
            if elem in names}


def graph_half_type(model: onnx.ModelProto) -> str | None:
    """"fp16" or "bf16" where `model` stores weights in that type (a graph `to_half` wrote, or
    one like it), else None."""
    stored = {t.data_type for t in model.graph.initializer}
    for precision, elem in HALF_TYPES.items():
        if elem in stored:
            return precision
    return None
