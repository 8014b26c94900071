"""BatchNormalization in inference mode is a constant per-channel affine on axis 1:

    y = a⊙x + b,   a = γ/√(var + ε),   b = β − mean·a          (ChannelAffine.from_batch_norm)

Before the rules run, each one is rewritten into what they work on, or folded at once:
- input of rank 2, (N, C): axis 1 is the last axis: one Mul and one Add on it, in place;
- its only reader is a Transpose that moves axis 1 last (Transformers apply BatchNorm1d as
  x.transpose(1, 2) -> BN -> transpose back): T(a⊙x + b) = a⊙T(x) + b, so the Transpose goes
  first and a Mul and an Add on the last axis follow it;
- produced by a Conv that nothing else reads (Conv -> BN): folded into the Conv's output
  channels right away (rule 2: W' = W·a, c' = a⊙c + b; exact for any padding).
The Mul takes the BatchNormalization's name, so the site the rules then see carries it.
Anything else stays and is reported with the reason. Training mode (batch statistics) is an
online norm and is left to online.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import ChannelAffine, FoldRejected, fold_into_producer
from unfold.fold.graph import Names, constant_value, rank, replace_weight

KIND = "BatchNormalization"


@dataclass
class Rewritten:
    """What became of each inference-mode BatchNormalization: by node name, either rewritten
    (a site for the rules, under the same name), folded into a Conv, or stayed with reasons."""

    sites: list[tuple[str, int]] = field(default_factory=list)  # (name, channels)
    folded: list[tuple[str, int, str]] = field(default_factory=list)  # (+ the path)
    stayed: list[tuple[str, int, str]] = field(default_factory=list)  # (+ the reason)


def is_inference_batch_norm(node: gs.Node) -> bool:
    """Uses its stored statistics: training_mode 0 and no running-statistics output read."""
    return node.op == "BatchNormalization" and not node.attrs.get("training_mode", 0) and \
        not any(t.outputs for t in node.outputs[1:])


def _affine(node: gs.Node) -> ChannelAffine | None:
    values = [constant_value(t) for t in node.inputs[1:5]]
    if len(values) != 4 or any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
    return ChannelAffine.from_batch_norm(gamma, beta, mean, var,
                                         float(node.attrs.get("epsilon", 1e-5)))


def _emit(source: gs.Tensor, out: gs.Tensor, affine: ChannelAffine, dtype: np.dtype,
          name: str, graph: gs.Graph, names: Names) -> None:
    """out = a⊙source + b as a Mul named `name` and an Add, both always (the site needs them)."""
    mid = gs.Variable(names.new(out.name), dtype=out.dtype, shape=out.shape)
    graph.nodes.append(gs.Node("Mul", name, inputs=[
        source, gs.Constant(names.new(f"{name}_scale"), affine.scale.astype(dtype))],
        outputs=[mid]))
    graph.nodes.append(gs.Node("Add", names.new(f"{name}_shift"), inputs=[
        mid, gs.Constant(names.new(f"{name}_shift"), affine.shift.astype(dtype))],
        outputs=[out]))


def _into_conv(node: gs.Node, affine: ChannelAffine, graph_outputs: set[str],
               names: Names) -> str | None:
    """Fold into the Conv producing the input; the path, or None when there is no such Conv."""
    x = node.inputs[0]
    if len(x.inputs) != 1 or x.inputs[0].op != "Conv" or len(x.outputs) != 1 or \
            x.name in graph_outputs:
        return None
    conv = x.inputs[0]
    weight = constant_value(conv.inputs[1])
    bias = constant_value(conv.inputs[2]) if len(conv.inputs) > 2 else None
    if weight is None or (len(conv.inputs) > 2 and bias is None):
        return None
    folded = fold_into_producer(affine, weight, bias, output_axis=0)  # may raise FoldRejected
    replace_weight(conv, 1, folded.weight, names)
    new_bias = gs.Constant(names.new(f"{conv.name}_bias"), folded.bias)
    if len(conv.inputs) > 2:
        conv.inputs[2] = new_bias
    else:
        conv.inputs.append(new_bias)
    out = node.outputs[0]
    node.outputs.clear()
    conv.outputs[0] = out
    return f"folded into its producer Conv '{conv.name}'"


def rewrite_batch_norms(graph: gs.Graph, names: Names) -> Rewritten:
    result = Rewritten()
    graph_outputs = {t.name for t in graph.outputs}
    for node in [n for n in graph.nodes if is_inference_batch_norm(n)]:
        affine = _affine(node)
        channels = affine.channels if affine else 0
        if affine is None:
            result.stayed.append((node.name, channels, "its scale, bias, mean or variance is "
                                                       "not constant"))
            continue
        x, out = node.inputs[0], node.outputs[0]
        dtype = np.asarray(constant_value(node.inputs[1])).dtype
        r = rank(x)
        readers = out.outputs
        try:
            path = _into_conv(node, affine, graph_outputs, names)
        except FoldRejected as rejected:
            result.stayed.append((node.name, channels, rejected.reason))
            continue
        if path is not None:
            result.folded.append((node.name, channels, path))
            continue
        name = node.name
        node.name = names.new(f"{name}_replaced")
        if r is not None and r <= 2:
            node.outputs.clear()
            _emit(x, out, affine, dtype, name, graph, names)
        elif r is not None and len(readers) == 1 and readers[0].op == "Transpose" and \
                out.name not in graph_outputs and \
                list(readers[0].attrs.get("perm", reversed(range(r))))[-1] == 1:
            transpose = readers[0]
            node.outputs.clear()
            transpose.inputs[0] = x
            moved = transpose.outputs[0]
            fresh = gs.Variable(names.new(moved.name), dtype=moved.dtype, shape=moved.shape)
            transpose.outputs[0] = fresh
            _emit(fresh, moved, affine, dtype, name, graph, names)
        else:
            node.name = name
            result.stayed.append((name, channels, "its channel axis (1) is not the last one "
                                                  "and no Transpose or Conv next to it makes "
                                                  "it so"))
            continue
        result.sites.append((name, channels))
    return result
