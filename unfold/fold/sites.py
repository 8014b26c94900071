"""Finding offline normalization sites in an ONNX graph.

A site is a maximal chain of elementwise Mul / Add / Sub / Div nodes, each with one constant
operand that is per channel on the LAST axis (shape (C,), (1, ..., C) or a scalar), where every
intermediate result has exactly one reader and is no graph output. The chain composes (rule 4)
into one ChannelAffine a⊙x + b. This is how UnifiedNorm / PN* export (Mul, Add), how the
authors' eval form exports once its constant Sqrt/Div subgraph is folded (Div, Mul, Add), and
how hand-written Sub/Div/Mul/Add norms and LayerScale constants look.

Not sites: an Add of a per-channel constant right after a MatMul/Gemm/Conv (that is the linear's
bias), and chains whose constants are all scalars (attention's 1/sqrt(d) scaling), unless the
fold itself made the chain: a norm's shift left behind by a bias-less linear (rule 1) is a
*pending shift*, a site of one Add that the fold carries on (rules 3 and 5).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.algebra import ChannelAffine
from unfold.fold.graph import constant_value, per_channel_constant, rank

ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div"})
LINEAR_PRODUCERS = frozenset({"MatMul", "Gemm", "Conv"})


@dataclass
class NormSite:
    nodes: list[gs.Node]  # in data order
    input: gs.Tensor  # what enters the norm
    output: gs.Tensor  # the norm's result
    affine: ChannelAffine  # per channel on the last axis
    kind: str
    dtype: np.dtype  # of its constants: what new constants for it are written in

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.output.name

    @property
    def channels(self) -> int:
        return self.affine.channels

    def remove_into_input_maker(self) -> None:
        """Once the affine lives in what produces the norm's input (rules 2 and 6): that node
        produces the norm's output instead (its other readers, Shape ops, follow), and the
        norm's own nodes fall away."""
        maker = self.input.inputs[0]
        for reader in [n for n in self.input.outputs if n is not self.nodes[0]]:
            reader.inputs[reader.inputs.index(self.input)] = self.output
        self.nodes[-1].outputs.clear()
        maker.outputs[maker.outputs.index(self.input)] = self.output


@dataclass
class _Step:
    node: gs.Node
    data: gs.Tensor
    scale: np.ndarray  # (C,) or (1,)
    shift: np.ndarray
    scalar_only: bool
    dtype: np.dtype


def _affine_step(node: gs.Node) -> _Step | None:
    if node.op not in ELEMENTWISE or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    first, second = node.inputs
    first_value, second_value = constant_value(first), constant_value(second)
    if (first_value is None) == (second_value is None):
        return None
    const_first = first_value is not None
    data = second if const_first else first
    vector = per_channel_constant(first_value if const_first else second_value, rank(data))
    if vector is None:
        return None
    shape = getattr(data, "shape", None)
    if vector.size > 1 and shape and isinstance(shape[-1], int) and shape[-1] != vector.size:
        return None  # the constant would broadcast the data, not scale its channels
    v = vector.astype(np.float64)
    ones, zeros = np.ones_like(v), np.zeros_like(v)
    if node.op == "Mul":
        scale, shift = v, zeros
    elif node.op == "Add":
        scale, shift = ones, v
    elif node.op == "Sub":
        scale, shift = (-ones, v) if const_first else (ones, -v)
    else:  # Div: x / c is affine, c / x is not
        if const_first or np.any(v == 0):
            return None
        scale, shift = 1.0 / v, zeros
    return _Step(node, data, scale, shift, scalar_only=vector.size == 1, dtype=vector.dtype)


def _only_reader(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _chain_from(step: _Step, step_of: Callable[[gs.Node], _Step | None],
                graph_outputs: set[str]) -> list[_Step]:
    """The chain that starts at `step`: each next step the only reader of the one before."""
    chain = [step]
    while True:
        reader = _only_reader(chain[-1].node.outputs[0], graph_outputs)
        following = step_of(reader) if reader is not None else None
        if following is None or following.data is not chain[-1].node.outputs[0]:
            return chain
        chain.append(following)


def site_starting_at(node: gs.Node, graph: gs.Graph) -> NormSite | None:
    """The offline affine chain whose first node is `node` (as far as its single readers go),
    or None when `node` is no per-channel affine step."""
    first = _affine_step(node)
    if first is None:
        return None
    return _site(_chain_from(first, _affine_step, {t.name for t in graph.outputs}))


def _site(chain: list[_Step]) -> NormSite:
    return NormSite(
        nodes=[s.node for s in chain], input=chain[0].data, output=chain[-1].node.outputs[0],
        affine=_compose(chain), kind="offline affine (" + "/".join(
            dict.fromkeys(s.node.op for s in chain)) + ")", dtype=chain[0].dtype)


def find_sites(graph: gs.Graph, carried: Set[str] = frozenset()) -> list[NormSite]:
    """Every offline affine chain of the graph, in topological order of their first node.
    `carried`: names of nodes the fold made to carry a site; a chain of only those is a site
    even where it looks like a bias (a pending shift)."""
    graph_outputs = {t.name for t in graph.outputs}
    steps = {id(n): s for n in graph.nodes if (s := _affine_step(n)) is not None}
    taken: set[int] = set()
    sites = []
    for node in graph.nodes:
        if id(node) not in steps or id(node) in taken:
            continue
        # walk back to the chain's start
        start = steps[id(node)]
        while True:
            producer = start.data.inputs[0] if len(start.data.inputs) == 1 else None
            if (producer is None or id(producer) not in steps or id(producer) in taken
                    or _only_reader(start.data, graph_outputs) is not start.node):
                break
            start = steps[id(producer)]
        chain = _chain_from(start, lambda n: steps.get(id(n)), graph_outputs)
        taken.update(id(s.node) for s in chain)
        if all(s.node.name in carried for s in chain):
            sites.append(_site(chain))
            continue
        # an Add right after a linear op is that op's bias, not part of a norm
        while chain and chain[0].node.op == "Add" and chain[0].data.inputs and \
                chain[0].data.inputs[0].op in LINEAR_PRODUCERS:
            chain = chain[1:]
        if not chain or all(s.scalar_only for s in chain):
            continue
        if not any(s.node.op in ("Mul", "Div") for s in chain):
            continue
        sites.append(_site(chain))
    return sites


def _compose(chain: list[_Step]) -> ChannelAffine:
    channels = max(s.scale.size for s in chain)
    affine = ChannelAffine.identity(channels)
    for s in chain:
        affine = affine.then(ChannelAffine(np.broadcast_to(s.scale, channels),
                                           np.broadcast_to(s.shift, channels)))
    return affine
