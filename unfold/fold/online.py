"""Online normalizations: statistics computed per position at run time, which no fold removes.
Found so they can be reported (kind and reason) instead of silently left in the graph.

- ops: LayerNormalization, RMSNormalization, SimplifiedLayerNormalization,
  SkipLayerNormalization, GroupNormalization, InstanceNormalization, and BatchNormalization
  in training mode;
- decomposed: a ReduceMean over the channel (last) axis whose input is x² (RMSNorm, and PN's
  group scaling, which is an RMSNorm over channel groups), or whose result is subtracted from
  its own input (LayerNorm written out);
- ConvNeXt-V2's global response norm: g = ‖x‖₂ over space (ReduceL2), divided by its own mean
  over the channels (ReduceMean, + eps): g / (mean(g) + eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unfold.fold.graph import constant_value, rank

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

ONLINE_OPS = {
    "LayerNormalization": "LayerNorm",
    "RMSNormalization": "RMSNorm",
    "SimplifiedLayerNormalization": "RMSNorm",
    "SkipLayerNormalization": "LayerNorm",
    "GroupNormalization": "GroupNorm",
    "InstanceNormalization": "InstanceNorm / GroupNorm",
}
REASON = "online: its statistics are computed from each input at run time"


@dataclass
class OnlineNorm:
    name: str
    kind: str
    reason: str = REASON
    module: str | None = None  # the torch module it was exported from, where recorded

    @property
    def label(self) -> str:
        return self.module or self.name


def _reduces_last_axis(node: gs.Node) -> bool:
    r = rank(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = constant_value(node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    if axes is None or r is None:
        return False
    return (r - 1) in [int(a) % r for a in axes]


def _is_square(node: gs.Node | None) -> bool:
    if node is None:
        return False
    if node.op == "Pow":
        exponent = constant_value(node.inputs[1])
        return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2
    return node.op == "Mul" and node.inputs[0] is node.inputs[1]


def _is_response_norm(node: gs.Node) -> bool:
    """ReduceL2 -> g, read by a Div as its numerator whose denominator is ReduceMean(g),
    perhaps plus a constant (GRN's eps)."""
    g = node.outputs[0]
    means = {id(r.outputs[0]) for r in g.outputs if r.op == "ReduceMean"}
    for reader in g.outputs:
        if reader.op != "Div" or reader.inputs[0] is not g:
            continue
        denominator = reader.inputs[1]
        if id(denominator) in means:
            return True
        producer = denominator.inputs[0] if len(denominator.inputs) == 1 else None
        if producer is not None and producer.op == "Add" and any(
                id(t) in means for t in producer.inputs) and any(
                constant_value(t) is not None for t in producer.inputs):
            return True
    return False


def find_online_norms(graph: gs.Graph) -> list[OnlineNorm]:
    found = []
    for node in graph.nodes:
        if node.op == "ReduceL2" and _is_response_norm(node):
            found.append(OnlineNorm(node.name, "GRN (global response norm)",
                                    "online: the L2 norm over space and its mean over the "
                                    "channels are computed from each input at run time"))
        elif node.op in ONLINE_OPS:
            found.append(OnlineNorm(node.name, ONLINE_OPS[node.op]))
        elif node.op == "BatchNormalization" and node.attrs.get("training_mode", 0):
            found.append(OnlineNorm(node.name, "BatchNorm in training mode",
                                    "online: training mode normalizes with the statistics of "
                                    "each batch; export the model in eval mode"))
        elif node.op == "ReduceMean" and _reduces_last_axis(node):
            source = node.inputs[0]
            producer = source.inputs[0] if len(source.inputs) == 1 else None
            if _is_square(producer):
                found.append(OnlineNorm(node.name, "RMSNorm (or PowerNorm group scaling)"))
            elif any(r.op == "Sub" and r.inputs[1] is node.outputs[0] and r.inputs[0] is source
                     for r in node.outputs[0].outputs):
                found.append(OnlineNorm(node.name, "LayerNorm (written out)"))
    return found
