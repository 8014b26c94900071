"""The fold's cleanup, after the rewrite: what folding norms away leaves of the layout ops
around them, as the exporters would have written the no-norm twin (and the twin gets the same
passes, so the two compare op for op)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from unfold.fold.graph import (
    RESHAPES,
    bypass,
    constant_value,
    is_round_trip,
    rank,
    value_readers,
)

# passes until nothing changes: each change can make a new pair meet (the authors' UN1d leaves
# Transpose -> Reshape -> Unsqueeze -> Reshape -> Transpose: four rounds to nothing)
MAX_TIDY_ROUNDS = 8


def tidy_layout(graph: gs.Graph) -> None:
    """Round trips dropped, reshapes to a tensor's own shape dropped, Transpose and Reshape
    chains composed, duplicate layout ops merged, until nothing changes."""
    for _ in range(MAX_TIDY_ROUNDS):
        before = len(graph.nodes)
        _drop_identities(graph)
        _drop_layout_round_trips(graph)
        _drop_identity_reshapes(graph)
        _compose_transposes(graph)
        _compose_reshapes(graph)
        graph.cleanup().toposort()
        _merge_duplicate_layout_ops(graph)
        graph.cleanup()
        if len(graph.nodes) == before:
            break


def known_shape(tensor: gs.Tensor) -> list | None:
    """A tensor's shape where every dim is known: a number, or a named dim (one value wherever
    that name appears: weights.infer_shapes names two dims alike only when they are equal)."""
    shape = getattr(tensor, "shape", None)
    if shape is None or not all(isinstance(d, (int, str)) and d != "" for d in shape):
        return None
    return list(shape)


def drop_identity(graph: gs.Graph, node: gs.Node) -> bool:
    """Where `node`'s one output is its one data input under another name, its readers read
    the input. A graph output keeps its name: the input's producer writes it instead, where
    nothing else reads the input (else the node stays). True when it went."""
    graph_outputs = {t.name for t in graph.outputs}
    if not node.outputs or not node.inputs:
        return False
    out, source = node.outputs[0], node.inputs[0]
    if out.name not in graph_outputs:
        bypass(node, source)
        return True
    producer = source.inputs[0] if len(source.inputs) == 1 else None
    if producer is None or source.name in graph_outputs or len(source.outputs) != 1 or \
            any(t is source for t in graph.inputs):
        return False
    node.outputs.clear()
    node.inputs.clear()
    producer.outputs[producer.outputs.index(source)] = out
    return True


def drop_same_type_casts(graph: gs.Graph) -> None:
    """A Cast to the type its input has already (`norm(x).to(x)`, which the TorchScript
    exporter writes as a float-to-float Cast) is the identity: it goes, so that it blocks
    nothing."""
    import numpy as np
    import onnx

    for node in [n for n in graph.nodes if n.op == "Cast" and n.inputs and n.outputs]:
        dtype = getattr(node.inputs[0], "dtype", None)
        if dtype is None or "to" not in node.attrs:
            continue
        try:
            source = dtype if isinstance(dtype, int) else \
                onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (TypeError, KeyError, ValueError):
            continue
        if int(node.attrs["to"]) == int(source):
            drop_identity(graph, node)


def _drop_identities(graph: gs.Graph) -> None:
    """Identity nodes (a neutral materialization leaves one) hide a Transpose pair from the
    round-trip check: they go, but where they name a graph output."""
    for node in [n for n in graph.nodes if n.op == "Identity" and n.inputs and n.outputs]:
        drop_identity(graph, node)


def _drop_identity_reshapes(graph: gs.Graph) -> None:
    """Reshape/Flatten/Squeeze/Unsqueeze whose output has its input's own (known) shape: once
    the norm between x.reshape(B, C, -1) and the reshape back is gone, what is left of the
    authors' UN1d is a reshape of (B, C, N) to (B, C, N)."""
    for node in [n for n in graph.nodes if n.op in RESHAPES]:
        if not node.outputs or not node.inputs:
            continue
        before, after = known_shape(node.inputs[0]), known_shape(node.outputs[0])
        if before is not None and before == after:
            drop_identity(graph, node)


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


LAYOUT_OPS = frozenset(RESHAPES + ("Transpose",))
MAX_ENVELOPE = 4  # layout ops looked at on each side of a site
MAX_SIMULATED = 1 << 22  # elements: a larger layout is not simulated (and not tracked)


def layout_envelope(site_input: gs.Tensor, site_output: gs.Tensor,
                    graph_outputs: set[str]) -> list[gs.Node]:
    """The layout ops a norm is wrapped in that exist for it alone: the longest chains of
    single-reader (Shape readers aside) Transpose/Reshape-family ops right before its input
    and right after its output that together compose to the identity (the authors' UN1d:
    permute, reshape, unsqueeze | norm | reshape, permute). Once the norm is folded they must
    go too; any that stays is the norm's, left behind. [] where there is none (or shapes are
    not known)."""
    before: list[gs.Node] = []
    tensor = site_input
    while len(before) < MAX_ENVELOPE and len(tensor.inputs) == 1 and \
            tensor.inputs[0].op in LAYOUT_OPS and len(value_readers(tensor)) == 1 and \
            tensor.name not in graph_outputs:
        before.insert(0, tensor.inputs[0])
        tensor = tensor.inputs[0].inputs[0]
    after: list[gs.Node] = []
    tensor = site_output
    while len(after) < MAX_ENVELOPE and tensor.name not in graph_outputs:
        readers = value_readers(tensor)
        if len(readers) != 1 or readers[0].op not in LAYOUT_OPS:
            break
        after.append(readers[0])
        tensor = readers[0].outputs[0]
    best: list[gs.Node] = []
    for i in range(len(before), -1, -1):
        for j in range(len(after), -1, -1):
            chain = before[len(before) - i:] + after[:j]
            if len(chain) > len(best) and i and j and _composes_to_identity(chain):
                best = chain
    return best


def _composes_to_identity(chain: list[gs.Node]) -> bool:
    """The layout ops of `chain`, applied one after the other (a norm between them changes no
    layout), give back the first one's input: simulated on an index array at the tensors'
    known shapes, a named dim standing for one value wherever it appears."""
    import numpy as np

    sizes: dict[str, int] = {}

    def concrete(tensor: gs.Tensor) -> list[int] | None:
        shape = known_shape(tensor)
        if shape is None:
            return None
        return [d if isinstance(d, int) else sizes.setdefault(d, 2 + len(sizes))
                for d in shape]

    start = concrete(chain[0].inputs[0])
    if start is None or int(np.prod(start)) > MAX_SIMULATED:
        return False
    index = np.arange(int(np.prod(start))).reshape(start)
    values = index
    for node in chain:
        if node.op == "Transpose":
            perm = node.attrs.get("perm", list(reversed(range(values.ndim))))
            if len(perm) != values.ndim:
                return False
            values = values.transpose(perm)
        else:
            shape = concrete(node.outputs[0])
            if shape is None or int(np.prod(shape)) != values.size:
                return False
            values = values.reshape(shape)
    return values.shape == index.shape and bool(np.array_equal(values, index))
