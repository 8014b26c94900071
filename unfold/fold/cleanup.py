"""The fold's cleanup, after the rewrite: what folding norms away leaves of the layout ops
around them, as the exporters would have written the no-norm twin (and the twin gets the same
passes, so the two compare op for op)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from unfold.fold.graph import RESHAPES, bypass, constant_value, is_round_trip, rank


def tidy_layout(graph: gs.Graph) -> None:
    """Round trips dropped, Transpose chains composed, duplicate layout ops merged."""
    _drop_layout_round_trips(graph)
    _compose_transposes(graph)
    _compose_reshapes(graph)
    graph.toposort()
    _merge_duplicate_layout_ops(graph)


def _drop_layout_round_trips(graph: gs.Graph) -> None:
    """x.transpose(1, 2) -> BN -> transpose back, or x.reshape(B*N, C) -> BN -> reshape back:
    once the norm between them is folded away the pair is a round trip; the exporters drop
    the same pair from the no-norm twin, and so does this (for the twin too). Where the first
    op has other readers it stays for them; the second goes."""
    graph_outputs = {t.name for t in graph.outputs}
    for second in [n for n in graph.nodes if n.op in RESHAPES + ("Transpose",)]:
        middle = second.inputs[0]
        if len(middle.inputs) != 1 or middle.name in graph_outputs or \
                second.outputs[0].name in graph_outputs:
            continue
        first = middle.inputs[0]
        if not is_round_trip(first, second):
            continue
        bypass(second, first.inputs[0])


def _compose_transposes(graph: gs.Graph) -> None:
    """Transpose(Transpose(x)) with nothing else reading the middle is one Transpose (a norm
    between x.transpose(1, 2) and an attention's own transpose, once folded away, leaves two:
    the exporter had merged the second with the norm's transpose back)."""
    graph_outputs = {t.name for t in graph.outputs}
    for second in [n for n in graph.nodes if n.op == "Transpose"]:
        if not second.outputs:
            continue  # gone with a round trip before
        middle = second.inputs[0] if second.inputs else None
        first = middle.inputs[0] if middle is not None and len(middle.inputs) == 1 else None
        r = rank(middle) if middle is not None else None
        if first is None or middle is None or r is None or first.op != "Transpose" or \
                middle.name in graph_outputs or len(middle.outputs) != 1:
            continue
        p1 = list(first.attrs.get("perm", reversed(range(r))))
        p2 = list(second.attrs.get("perm", reversed(range(r))))
        perm = [p1[i] for i in p2]
        source = first.inputs[0]
        if perm == list(range(r)) and second.outputs[0].name not in graph_outputs:
            bypass(second, source)  # a round trip: nothing left of either
            continue
        second.attrs["perm"] = perm
        second.inputs[0] = source


# ops that compute nothing but a layout of their inputs: two with the same inputs and
# attributes compute the same tensor
DEDUPLICABLE = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape"})


def _compose_reshapes(graph: gs.Graph) -> None:
    """Reshape(Reshape(x, s1), s2) with nothing else reading the middle is Reshape(x, s2)
    when s2 is a constant that copies no dim from the middle (no 0): a BatchNorm1d applied
    through x.flatten(0, 1) and reshape_as(x), folded away, leaves the two next to a head
    split's Reshape; the exporter wrote the twin's as one."""
    graph_outputs = {t.name for t in graph.outputs}
    for second in [n for n in graph.nodes if n.op == "Reshape"]:
        if not second.outputs or len(second.inputs) < 2:
            continue
        middle = second.inputs[0]
        first = middle.inputs[0] if len(middle.inputs) == 1 else None
        target = constant_value(second.inputs[1])
        if first is None or first.op not in ("Reshape", "Flatten") or target is None or \
                middle.name in graph_outputs or len(middle.outputs) != 1 or \
                (0 in target.reshape(-1).tolist() and not second.attrs.get("allowzero", 0)):
            continue
        second.inputs[0] = first.inputs[0]


def _merge_duplicate_layout_ops(graph: gs.Graph) -> None:
    """A norm folded away between x.transpose(1, 2) and the transpose back can leave a second
    Transpose of the same tensor next to one the graph had (the exporter had cancelled the
    pair around the norm): one is enough; the twin's graph gets the same treatment."""
    graph_outputs = {t.name for t in graph.outputs}
    seen: dict[tuple, gs.Node] = {}
    for node in graph.nodes:
        if node.op not in DEDUPLICABLE or len(node.outputs) != 1 or \
                node.outputs[0].name in graph_outputs:
            continue
        key = (node.op, tuple(id(t) for t in node.inputs),
               tuple(sorted((k, str(v)) for k, v in node.attrs.items())))
        kept = seen.setdefault(key, node)
        if kept is node:
            continue
        bypass(node, kept.outputs[0])
