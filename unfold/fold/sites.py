"""Finding offline normalization sites in an ONNX graph: where the dataflow fold starts a
pending affine.

A site is either an inference-mode BatchNormalization (per channel on axis 1), or a maximal
chain of elementwise Mul / Add / Sub / Div nodes, each with one constant operand that is per
channel on ONE axis (shape (C,), (1, ..., C), (1, C, 1, 1): channels last or first) or a
scalar, where every intermediate result has exactly one reader and is no graph output. The
chain composes (rule 4) into one affine. This is how UnifiedNorm / PN* export (Mul, Add), how
the authors' eval form exports once its constant Sqrt/Div subgraph is folded (Div, Mul, Add),
and how hand-written Sub/Div/Mul/Add norms, DyT's trailing affine and LayerScale constants
look. SLAB's RepBN, BN(x) + α·x, is one site on x.

Not sites: an Add of a per-channel constant right after a MatMul/Gemm/Conv (that is the
linear's bias), chains whose constants are all scalars (attention's 1/sqrt(d) scaling), and
constants that vary along more than one axis (a position table, a mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import (
    Affine,
    affine_of_step,
    batch_norm_affine,
    broadcasts_within,
    inverse_permutation,
    reshape_constant,
    transpose_constant,
)
from unfold.fold.graph import constant_operand, constant_value, is_floating, undoes

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div"})
LINEAR_PRODUCERS = frozenset({"MatMul", "Gemm", "Conv"})


BATCH_NORM = "BatchNormalization"


@dataclass
class Site:
    """An offline norm (or LayerScale, or any chain of per-channel constant Mul/Add/Sub/Div):
    `nodes` in data order compute `affine(input)` into `output`. A BatchNormalization in
    inference mode is a site of one node, per channel on axis 1."""

    nodes: list[gs.Node]
    input: gs.Tensor
    output: gs.Tensor
    affine: Affine
    kind: str
    dtype: np.dtype
    channels: int
    label: str | None = None  # the name to report it by, where not its first node's

    def __post_init__(self) -> None:
        self.slot = self.nodes[0].inputs.index(self.input)  # where the first node reads it

    @property
    def name(self) -> str:
        return self.label or self.nodes[0].name or self.output.name

    @property
    def secondary(self) -> bool:
        """One Mul by a per-channel constant (LayerScale, a per-head logit scale): folded where
        it can be, but no norm: where it stays, nothing is left undone."""
        return len(self.nodes) == 1 and self.nodes[0].op == "Mul"

    def current_input(self) -> gs.Tensor:
        """What the site reads now (the rewrite may have pointed it at a carrier)."""
        return self.nodes[0].inputs[self.slot]

    def input_readers(self) -> list[gs.Node]:
        """Its nodes that read its input (RepBN reads it twice: the BN's way, and α·x)."""
        current = self.current_input()
        return [n for n in self.nodes if any(t is current for t in n.inputs)]


@dataclass
class _AxisStep:
    node: gs.Node
    data: gs.Tensor
    affine: Affine
    axis: int | None  # the one axis its constant varies along; None for a scalar
    dtype: np.dtype


def _axis_step(node: gs.Node) -> _AxisStep | None:
    if node.op not in ELEMENTWISE or len(node.outputs) != 1:
        return None
    operand = constant_operand(node)
    if operand is None:
        return None
    const_first = operand[0] == 0
    data, value = node.inputs[1 - operand[0]], operand[1]
    shape = getattr(data, "shape", None)
    if shape is None or not is_floating(value.dtype) or value.ndim > len(shape):
        return None
    aligned = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    if not broadcasts_within(aligned, shape):
        return None  # the constant would broadcast the data, not scale its channels
    varying = [a for a, d in enumerate(aligned.shape) if d > 1]
    if len(varying) > 1:
        return None  # a position table, a mask: not per channel
    affine = affine_of_step(node.op, aligned, len(shape), const_first)
    if affine is None:
        return None
    return _AxisStep(node, data, affine, varying[0] if varying else None, value.dtype)


def _batch_norm_site(node: gs.Node) -> Site | None:
    if node.op != BATCH_NORM or node.attrs.get("training_mode", 0) or \
            any(t.outputs for t in node.outputs[1:]):
        return None
    values = [constant_value(t) for t in node.inputs[1:5]]
    shape = getattr(node.inputs[0], "shape", None)
    if len(values) != 4 or any(v is None for v in values) or shape is None or len(shape) < 2:
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
    scale, shift = batch_norm_affine(gamma, beta, mean, var,
                                     float(node.attrs.get("epsilon", 1e-5)))
    per_axis = (1, -1) + (1,) * (len(shape) - 2)
    return Site([node], node.inputs[0], node.outputs[0],
                Affine(scale.reshape(per_axis), shift.reshape(per_axis)),
                BATCH_NORM, np.asarray(values[0]).dtype, int(scale.shape[0]))


def find_affine_sites(graph: gs.Graph) -> list[Site]:
    """Every offline norm site of `graph`, in the order of its nodes: inference-mode
    BatchNormalizations, and maximal chains of per-channel constant Mul/Add/Sub/Div steps on
    one axis (each intermediate read by the next step alone and no graph output) that scale
    (a Mul or Div) and are not all scalars. An Add right after a MatMul/Gemm/Conv is that op's
    bias, not part of a norm."""
    graph_outputs = {t.name for t in graph.outputs}
    steps = {id(n): s for n in graph.nodes if (s := _axis_step(n)) is not None}
    taken: set[int] = set()
    sites: list[Site] = []

    def follows(step: _AxisStep, nxt: _AxisStep | None) -> bool:
        out = step.node.outputs[0]
        return nxt is not None and nxt.data is out and out.name not in graph_outputs and \
            len(out.outputs) == 1 and id(nxt.node) not in taken and \
            (step.axis is None or nxt.axis is None or step.axis == nxt.axis)

    for node in graph.nodes:
        bn = _batch_norm_site(node)
        if bn is not None:
            sites.append(bn)
            continue
        if id(node) not in steps or id(node) in taken:
            continue
        start = steps[id(node)]
        while True:  # walk back to the chain's start
            producer = start.data.inputs[0] if len(start.data.inputs) == 1 else None
            before = steps.get(id(producer)) if producer is not None else None
            if before is None or id(before.node) in taken or not follows(before, start):
                break
            start = before
        chain = [start]
        while True:
            readers = chain[-1].node.outputs[0].outputs
            nxt = steps.get(id(readers[0])) if len(readers) == 1 else None
            if not follows(chain[-1], nxt):
                break
            assert nxt is not None
            chain.append(nxt)
        taken.update(id(s.node) for s in chain)
        while chain and chain[0].node.op == "Add" and chain[0].data.inputs and \
                chain[0].data.inputs[0].op in LINEAR_PRODUCERS:
            chain = chain[1:]  # a bias
        if not chain or all(s.axis is None for s in chain) or \
                not any(s.node.op in ("Mul", "Div") for s in chain):
            continue
        affine = chain[0].affine
        for step in chain[1:]:
            affine = affine.then(step.affine)
        axis = next(s.axis for s in chain if s.axis is not None)
        sites.append(Site([s.node for s in chain], chain[0].data, chain[-1].node.outputs[0],
                          affine, "offline affine (" + "/".join(
                              dict.fromkeys(s.node.op for s in chain)) + ")",
                          chain[0].dtype, int(max(affine.scale.shape[axis],
                                                  affine.shift.shape[axis]))))
    return repbn_sites(graph, sites)


def _single_producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def _read_only_by(tensor: gs.Tensor, node: gs.Node, graph_outputs: set[str]) -> bool:
    return tensor.name not in graph_outputs and len(tensor.outputs) == 1 and \
        tensor.outputs[0] is node


def _carrier_term(v: gs.Tensor, x: gs.Tensor, add: gs.Node, rank: int,
                  graph_outputs: set[str]) -> tuple[gs.Node | None, np.ndarray] | None:
    """(the Mul, k) when v = k⊙x (k a scalar or per-channel constant), (None, 1) when v is x."""
    if v is x:
        return None, np.ones((1,) * rank)
    mul = _single_producer(v)
    if mul is None or mul.op != "Mul" or not _read_only_by(v, add, graph_outputs):
        return None
    operand = constant_operand(mul)
    if operand is None or mul.inputs[1 - operand[0]] is not x or operand[1].ndim > rank:
        return None
    k = operand[1]
    aligned = np.asarray(k, dtype=np.float64).reshape((1,) * (rank - k.ndim) + k.shape)
    return (mul, aligned) if broadcasts_within(aligned, getattr(x, "shape", None)) else None


def _same_layout_of(v: gs.Tensor, after: gs.Node, source: gs.Tensor) -> gs.Tensor | None:
    """x when v = k⊙x with x = L(source) for L the same layout op as `after`."""
    mul = _single_producer(v)
    if mul is None or mul.op != "Mul":
        return None
    for x in mul.inputs:
        op = _single_producer(x)
        if op is not None and op.op == after.op == "Transpose" and op.inputs[0] is source and \
                list(op.attrs.get("perm", [])) == list(after.attrs.get("perm", [])):
            return x
    return None


def _through_layout(value: np.ndarray, node: gs.Node, _site: Site) -> np.ndarray | None:
    perm = node.attrs.get("perm", list(reversed(range(value.ndim))))
    return transpose_constant(value, perm)


def repbn_sites(graph: gs.Graph, sites: list[Site]) -> list[Site]:
    """SLAB's RepBN, BN(x) + α·x (with the BN between a Transpose pair, as BatchNorm1d on
    tokens is applied): one site on x, affine (a + α)⊙x + b, in place of the BN's. Also a
    norm plus its own input (x + norm(x))."""
    graph_outputs = {t.name for t in graph.outputs}
    by_output = {s.output.name: s for s in sites}
    replaced: dict[int, Site] = {}
    for add in graph.nodes:
        if add.op != "Add" or len(add.inputs) != 2 or \
                any(constant_value(t) is not None for t in add.inputs):
            continue
        for u, v in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            site, after = by_output.get(u.name), None
            if site is None:
                after = _single_producer(u)
                if after is None or after.op not in ("Transpose", "Reshape") or \
                        after.inputs[0].name not in by_output or \
                        not _read_only_by(u, add, graph_outputs):
                    continue
                site = by_output[after.inputs[0].name]
                if not _read_only_by(site.output, after, graph_outputs):
                    continue
            elif not _read_only_by(u, add, graph_outputs):
                continue
            if id(site) in replaced:
                continue
            x, before, affine = site.input, None, site.affine
            twin = _same_layout_of(v, after, site.input) if after is not None else None
            if twin is not None:
                # the exporter cancelled x.transpose().transpose(): BN reads R, α·x reads
                # x = L(R), and L(BN(R)) is the BN's affine moved through L, on x
                mapped = affine.map(lambda value, _, n=after, s=site: _through_layout(value, n, s))
                term = _carrier_term(v, twin, add, affine.rank, graph_outputs)
                if mapped is None or term is None:
                    continue
                mul, k = term
                nodes = ([mul] if mul is not None else []) + site.nodes + [after, add]
                if mul is None:
                    continue  # (x + norm: x read by the layout op, nothing of the site does)
                replaced[id(site)] = Site(nodes, twin, add.outputs[0],
                                          Affine(mapped.scale + k, mapped.shift),
                                          f"RepBN ({site.kind} + α·x)", site.dtype,
                                          site.channels, label=site.name)
                break
            if after is not None:
                before = _single_producer(site.input)
                if before is None or not undoes(after, before) or \
                        not _read_only_by(site.input, site.nodes[0], graph_outputs):
                    continue
                x = before.inputs[0]
                if before.op == "Transpose":
                    perm = list(before.attrs.get("perm", reversed(range(affine.rank))))
                    back = affine.map(lambda value, _, p=perm: transpose_constant(
                        value, inverse_permutation(p)))
                else:
                    back = affine.map(lambda value, _, a=site.input, b=x: reshape_constant(
                        value, getattr(a, "shape", None), getattr(b, "shape", None)))
                if back is None:
                    continue
                affine = back
            term = _carrier_term(v, x, add, affine.rank, graph_outputs)
            if term is None:
                continue
            mul, k = term
            nodes = ([before] if before is not None else []) + site.nodes + \
                ([after] if after is not None else []) + ([mul] if mul is not None else []) + \
                [add]
            replaced[id(site)] = Site(nodes, x, add.outputs[0],
                                      Affine(affine.scale + k, affine.shift),
                                      f"RepBN ({site.kind} + α·x)", site.dtype, site.channels,
                                      label=site.name)
            break
    inside = {id(n) for s in replaced.values() for n in s.nodes}
    return [replaced.get(id(s), s) for s in sites
            if id(s) in replaced or not any(id(n) in inside for n in s.nodes)]
