"""What the fold does not reach, said instead of passed over in silence (a report of "0 of 0
sites folded" on a model full of norms is a lie by omission):

- a quantized model (QuantizeLinear / DequantizeLinear): its norms read dequantized constants
  and sit between quantizers; folding changes the ranges its scales were calibrated for.
  Fold the fp32 model, then quantize;
- a bfloat16 or float8 model: onnx-graphsurgeon holds no such values (it casts them to
  float32), so a fold would write a graph of mixed types. Its norms are found and reported as
  stayed: fold the fp32 model, then convert;
- norms inside the subgraphs of If / Loop / Scan and inside model-local functions, which the
  dataflow pass does not enter.

`whole_model_reason(parts)` and `unreached_norms(graph)` say each in a sentence; the report
carries them, `no_norm_left` is false while any is there, and `--strict` fails.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import onnx

from unfold.fold.graph import constant_value
from unfold.fold.online import find_online_norms
from unfold.fold.sites import find_affine_sites
from unfold.model_parts import ModelParts, weight_header

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

QUANTIZERS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                        "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger"})
# element types a fold cannot compute in (see the module's docstring)
NARROW_FLOATS = {onnx.TensorProto.BFLOAT16: "bfloat16"} | {
    getattr(onnx.TensorProto, name): name.lower() for name in
    ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
    if hasattr(onnx.TensorProto, name)}

def quantized_ops(model: onnx.ModelProto) -> Counter[str]:
    """The quantization ops of the model's main graph."""
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZERS)


def narrow_float_type(model: onnx.ModelProto, weight_types: list[int]) -> str | None:
    """The bfloat16/float8 type the model computes in (its inputs' or its weights'), if any."""
    for value in list(model.graph.input) + list(model.graph.output):
        name = NARROW_FLOATS.get(value.type.tensor_type.elem_type)
        if name is not None:
            return name
    for data_type in weight_types:
        if data_type in NARROW_FLOATS:
            return NARROW_FLOATS[data_type]
    return None


def whole_model_reason(parts: ModelParts) -> str | None:
    """Why the model as a whole cannot be folded exactly (the fold then leaves it as it is);
    None where it can."""
    quantizers = quantized_ops(parts.skeleton)
    if quantizers:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(quantizers.items()))
        return (f"quantized model ({listed}): its norms sit between quantizers calibrated for "
                f"them; fold the fp32 model, then quantize")
    narrow = narrow_float_type(parts.skeleton,
                               [weight_header(w)[0] for w in parts.weights.values()])
    if narrow is not None:
        return (f"{narrow} model: the fold computes its constants in float64 and cannot write "
                f"{narrow} back exactly; fold the fp32 model, then convert it to {narrow}")
    return None


def _per_channel_scale(node: gs.Node) -> gs.Tensor | None:
    """The variable a Mul/Div scales by a constant of more than one value that varies along
    one axis (a norm's scale, read off the constant alone), or None."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    values = [constant_value(t) for t in node.inputs]
    if (values[0] is None) == (values[1] is None):
        return None
    value = values[0] if values[0] is not None else values[1]
    assert value is not None
    if value.size > 1 and sum(d > 1 for d in value.shape) == 1:
        return node.inputs[1] if values[0] is not None else node.inputs[0]
    return None


def shapeless_scales(graph: gs.Graph) -> list[str]:
    """A sentence for each per-channel scale (a norm's Mul) whose input has no shape, which
    the site finder needs: after an op ONNX's shape inference knows nothing of (another
    domain's, without a function), every norm is out of the fold's sight. Read before the
    fold (the fold's own new tensors have no shapes either)."""
    foreign = sorted({f"{n.op} '{n.name}'" for n in graph.nodes if ":" in n.op})
    found = []
    for node in graph.nodes:
        data = _per_channel_scale(node)
        if data is not None and getattr(data, "shape", None) is None:
            after = f" (after {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})" \
                if foreign else ""
            found.append(f"{node.op} '{node.name}' scales '{data.name}' per channel, but that "
                         f"tensor's shape is unknown{after}: a norm there is not folded (define "
                         f"the ops before it as model-local functions, so that ONNX infers "
                         f"their shapes)")
    return found


def _norms_in(graph: gs.Graph) -> int:
    """Online norms, and per-channel scales: a Mul/Div of a variable by a constant of more than
    one value that varies along one axis (inside functions and subgraphs tensors seldom have
    shapes, which the site finder needs: this looks at the constants alone)."""
    scales = sum(_per_channel_scale(node) is not None for node in graph.nodes)
    return max(scales, len(find_affine_sites(graph))) + len(find_online_norms(graph))


def unreached_norms(graph: gs.Graph) -> list[str]:
    """A sentence for each subgraph (If/Loop/Scan) and model-local function that holds norm
    sites or online norms: the pass does not enter them."""
    import onnx_graphsurgeon as gs

    found = []
    for node in graph.nodes:
        for attr, value in node.attrs.items():
            subgraphs = value if isinstance(value, (list, tuple)) else [value]
            for subgraph in subgraphs:
                if isinstance(subgraph, gs.Graph):
                    count = _norms_in(subgraph) + len(unreached_norms(subgraph))
                    if count:
                        found.append(f"{node.op} '{node.name}' holds {count} norm(s) in its "
                                     f"'{attr}' subgraph, which the fold does not enter")
    for function in getattr(graph, "functions", []):
        count = _norms_in(function)
        if count:
            found.append(f"the model-local function '{function.domain}:{function.name}' holds "
                         f"{count} norm(s), which the fold does not enter (export without "
                         f"functions, or inline them first)")
    return found

