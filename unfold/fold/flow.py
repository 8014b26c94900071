"""The state of the dataflow fold, what each handler returns, and the handlers' own shape
(DESIGN.md, "How the fold runs").

A `Pending` on a tensor of the original graph says what that tensor holds in terms of the
rewritten graph: `affine(carrier)`, where the carrier is the tensor the rewritten graph computes
in its place (the input of a norm that has gone, or an op that now reads carriers itself).
Attention's `PerQueryConstant` is the other kind of thing carried: the carrier plus an unknown
per-query constant, which only a softmax removes. A handler's `prep` looks at one node whose
inputs carry pendings and returns either a `Move` (the node is rewired to read the carriers, its
outputs carry these pendings, and its `writes` are what changes: a sink's weights, a bias, a
Concat's constant part, each value computed when the plan was made) or a `Stop` (the node needs
the true values: the pending is materialized for it, one Mul and one Add). Plans are data: the
graph changes only in the rewrite pass, which applies their writes and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from unfold.fold.algebra import Affine, FoldRejected
from unfold.fold.graph import SHAPE_READERS, constant_value

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from unfold.fold.backward import Walk


@dataclass(kw_only=True)
class Carried:
    """What the pass carries on a tensor of the original graph, in terms of its carrier: a
    `Pending` affine, or attention's `PerQueryConstant`."""

    origins: tuple[str, ...]  # the sites composed into it, the first one names it
    source: gs.Tensor | None = None  # the original-graph tensor its carrier is (a site's input)
    carrier: gs.Tensor | None = None  # set by the rewrite pass
    stayed: tuple[str, ...] = ()  # notes of what of it stayed on the way (reported)


@dataclass(kw_only=True)
class Pending(Carried):
    """The tensor holds `affine`(carrier)."""

    affine: Affine

    def then(self, affine: Affine, *, keep_source: bool = False, **changes) -> Pending:
        """The same sites' pending after an op: `affine` on the op's output."""
        return replace(self, affine=affine, source=self.source if keep_source else None,
                       carrier=None, **changes)

    def per_query(self, axis: int) -> PerQueryConstant:
        """What a pure shift of a key becomes in the attention logits (attention.py)."""
        return PerQueryConstant(origins=self.origins, stayed=self.stayed, axis=axis)


@dataclass(kw_only=True)
class PerQueryConstant(Carried):
    """The tensor holds its carrier plus an unknown shift that is constant along `axis` (a key
    projection's shift inside attention logits: what a softmax over that axis ignores). Only
    attention's `carry_invariant` takes it; it can never be materialized."""

    axis: int

    def moved(self) -> PerQueryConstant:
        """The same after an op that keeps it one (a scalar scale, an added mask)."""
        return replace(self, source=None, carrier=None)


def merged(pendings: list[Pending], affine: Affine, **changes) -> Pending:
    """One pending for the output of an op that joins several: their sites, in order."""
    origins = tuple(dict.fromkeys(o for p in pendings for o in p.origins))
    stayed = tuple(dict.fromkeys(s for p in pendings for s in p.stayed))
    changes.setdefault("source", None)
    return replace(pendings[0], affine=affine, origins=origins, stayed=stayed, carrier=None,
                   **changes)


@dataclass
class Move:
    """The node commutes with (or absorbs) the pendings on its input slots `consumes`.

    `outputs`: the original tensors (by name) that carry a pending afterwards; an identity
    affine there means the pending is gone (absorbed) and the tensor is simply its carrier.
    `deletes`: nodes that go (a norm composed into the pending, an Add that merged two affines of
    one carrier); the listed outputs then ride on the carrier of input slot `carrier_slot`, or on
    `carrier_tensor` itself. Otherwise the node stays and each listed output gets a fresh
    carrier tensor. `cost`: ops the move adds (a padded Conv's Add of b/a, a stream re-scale).
    """

    rule: str  # the sub-rule it takes (what --skip names)
    event: str
    consumes: tuple[int, ...]
    outputs: Mapping[str, Carried] = field(default_factory=dict)
    cost: float = 0.0
    deletes: tuple[gs.Node, ...] = ()
    carrier_slot: int | None = None
    carrier_tensor: gs.Tensor | None = None
    writes: tuple[Write, ...] = ()  # what the rewrite changes (constants, a Mul before it)
    absorbed_by: tuple[str, ...] = ()
    leaves: str | None = None  # what of the affine stays behind (reported, status partial)
    refused: str | None = None  # why a sink nearby could not take it (reported if it stays)
    # what happens after it is paid anyway (a norm composed into the pending: on its own it
    # would go the same way), so an edge into it costs only `cost`
    own_outputs: bool = False
    # why it does not take the pendings on its other inputs (a shifted query beside a key)
    declined: dict[int, str] = field(default_factory=dict)
    uses: tuple[str, ...] = ()  # further sub-rules it relies on (a composition sent back)


@dataclass(frozen=True)
class Replace:
    """node.inputs[slot] becomes a new constant `value` (a weight where `weights` gives its
    largest |value| before and after, for the report)."""

    node: gs.Node
    slot: int
    value: np.ndarray
    weights: tuple[float, float] | None = None


@dataclass(frozen=True)
class Fill:
    """node.inputs[slot], empty or missing, becomes a new constant `value` named after `base`
    (a bias a linear did not have), and `attrs` are set on the node with it."""

    node: gs.Node
    slot: int
    value: np.ndarray
    base: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Before:
    """node.inputs[slot] becomes `affine` of the carrier that reached it: a Mul and/or an Add
    put before the node (a stream re-scaled, the shift a padded Conv cannot take)."""

    node: gs.Node
    slot: int
    affine: Affine
    base: str


# what a plan changes in the graph, all of it computed when the plan was made: the rewrite
# (dataflow.py) applies these and nothing else
Write = Replace | Fill | Before


@dataclass
class Stop:
    """The node needs the true values of its input: the pending is materialized for it."""

    reason: str


@dataclass(frozen=True)
class Rule:
    """A sub-rule: one case of the folding algebra, by the name `--skip` takes."""

    name: str
    kind: str  # "sink": absorbs the affine; "transfer": carries it on; "backward": into producers
    algebra: str
    ops: frozenset[str] = frozenset()  # where only some of its handlers' ops use it


Prep = Callable[["gs.Node", dict[int, Pending], "Context"], "Move | Stop | None"]
Back = Callable[["gs.Node", Affine, "Walk", bool], bool]


@dataclass(frozen=True)
class Handler:
    """All the fold knows of some ops (of ONNX's own domain unless `domain` says otherwise),
    in one module of transfer/ (`family`):

    `prep(node, pendings, ctx)`: forward, with pendings on some inputs: a `Move` (naming the
    sub-rule it uses, in `Move.rule`; its `writes`, what the rewrite does) or a `Stop` (why it
    needs the true values); None for "nothing to say" (the op does not commute).
    `back(node, affine, walk, want_shift)`: backward, this op's part of making its output hold
    affine(output) (backward.py's walk calls it): True when the shift found a place too, False
    for the scale only; raises `backward.Refused` where it cannot.
    `rules`: the sub-rules these use; `backward`: what `back` does, by op (the ops it takes
    an affine back through), for `unfold rules`."""

    family: str
    ops: frozenset[str]
    rules: tuple[Rule, ...]
    prep: Prep | None = None
    back: Back | None = None
    backward: Mapping[str, str] = field(default_factory=dict)
    domain: str = ""

    def rules_of(self, op: str) -> list[Rule]:
        """The sub-rules `op` may use."""
        return [rule for rule in self.rules if not rule.ops or op in rule.ops]


def domain_of(node: gs.Node) -> str:
    """The node's domain, ONNX's own spelled ""."""
    domain = getattr(node, "domain", None) or ""
    return "" if domain == "ai.onnx" else domain


T = TypeVar("T")


class Context:
    """What handlers may look at: the graph (unchanged while they plan), its outputs, the
    nodes of its norm sites, the handlers of its ops, the rules to skip and the bound on
    carried scales; and the graph as the pass leaves it. The driver tells it what the pass has
    done so far through three methods only (`gone_back` in the analysis, `stand_in` and
    `carry` in the rewrite), so that its questions (`resolve`, `producer`, `value_readers`,
    `read_only_by`) are answered for the graph as it will be, not as it was."""

    def __init__(self, graph: gs.Graph, *, skip: Collection[str] = (),
                 max_scale: float | None = None,
                 handlers: Mapping[tuple[str, str], Handler] | None = None,
                 site_nodes: Collection[gs.Node] = ()) -> None:
        self.graph = graph
        self.handlers = handlers or {}
        self.site_nodes = frozenset(id(n) for n in site_nodes)  # every norm site's nodes
        # the arithmetic plans did, by what it read (see `computed`)
        self._computed: dict[tuple, tuple[tuple[gs.Tensor | None, ...], Any]] = {}
        # the rewrite pass's carriers, by name: the original tensor each stands for (whose
        # readers still count: those not yet rewired read the original)
        self.stands_for: dict[str, gs.Tensor] = {}
        # during the analysis, what the rewrite will have done by then to the nodes planned
        # so far: a norm that goes back into its producer is gone (`dead`), its output then
        # simply its input (`forward`); later plans look at the graph as it will be
        self.dead: set[int] = set()
        self.forward: dict[str, gs.Tensor] = {}
        self._forwarded_into: dict[str, list[str]] = {}
        self._tensors = graph.tensors()
        # the rewrite pass's pendings by carrier: carrier name -> the original tensors whose
        # values are an affine of it (their readers read the carrier too, through the pending)
        self._carried: dict[str, set[str]] = {}
        self.graph_outputs = {t.name for t in graph.outputs}
        self.skip = frozenset(skip)
        self.max_scale = max_scale

    def handler(self, node: gs.Node) -> Handler | None:
        """The handler of the node's (domain, op), if the fold knows it."""
        return self.handlers.get((domain_of(node), node.op))

    def shape(self, tensor: gs.Tensor) -> list | None:
        shape = getattr(tensor, "shape", None)
        return list(shape) if shape is not None else None

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = getattr(tensor, "shape", None)
        return len(shape) if shape is not None else None

    def constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A constant's values (read afresh: a weight's are copied out each time)."""
        return constant_value(tensor)

    def private_constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A constant's values as an array nothing else holds (safe to change in place): a
        weight read from its TensorProto is that already; a value the fold made is copied."""
        import onnx_graphsurgeon as gs

        if isinstance(tensor, gs.Constant) and \
                isinstance(tensor._values, gs.ir.tensor.LazyValues):  # noqa: SLF001
            return self.constant(tensor)
        value = self.constant(tensor)
        return None if value is None else value.copy()

    def computed(self, compute: Callable[..., T], constants: Sequence[gs.Tensor | None],
                 *args: Any, private: bool = False, **kwargs: Any) -> T:
        """compute(the values of `constants` (None stays None), *args, **kwargs), done once per
        those constant tensors and arguments: the analysis, which prices a fold by it (and
        stops where it raises FoldRejected), and the rewrite, which applies it, get the same
        result. A constant the rewrite has replaced since is another tensor, so a second fold
        into one weight computes afresh from its new values. `private`: the values are copies
        nothing else holds (compute may change them in place)."""
        key = (compute, tuple(id(t) for t in constants), fingerprint(args),
               fingerprint(sorted(kwargs.items())))
        entry = self._computed.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], constants, strict=True)):
            result = entry[1]
        else:
            read = self.private_constant if private else self.constant
            values = [None if t is None else read(t) for t in constants]
            try:
                result = compute(*values, *args, **kwargs)
            except FoldRejected as rejected:
                result = rejected
            self._computed[key] = (tuple(constants), result)
        if isinstance(result, FoldRejected):
            raise result
        return result

    def forget_computed(self) -> None:
        self._computed.clear()

    def constant_shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        """A constant's shape without reading its values (a 90 MB embedding table's analysis
        needs only that); None for a variable."""
        import onnx_graphsurgeon as gs

        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        value = self.constant(tensor)  # a Constant node's (small) value
        return None if value is None else tuple(value.shape)

    def tensor(self, name: str) -> gs.Tensor:
        """The original graph's tensor of that name."""
        return self._tensors[name]

    def is_output(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.graph_outputs

    def resolve(self, tensor: gs.Tensor) -> gs.Tensor:
        while tensor.name in self.forward:
            tensor = self.forward[tensor.name]
        return tensor

    def gone_back(self, name: str, target: gs.Tensor, nodes: Collection[gs.Node]) -> None:
        """(analysis) a norm's `nodes` will have gone back into its producer: its output, the
        tensor `name`, will simply be `target` (its input)."""
        self.forward[name] = target
        self._forwarded_into.setdefault(target.name, []).append(name)
        self.dead.update(id(n) for n in nodes)

    def stand_in(self, carrier: gs.Tensor, original: gs.Tensor) -> None:
        """(rewrite) a fresh `carrier` now computes in place of the tensor `original` (whose
        readers still count: those not yet rewired read the original)."""
        self.stands_for[carrier.name] = original

    def value_readers(self, tensor: gs.Tensor) -> list[gs.Node]:
        readers = [n for n in tensor.outputs if n.op not in SHAPE_READERS and
                   id(n) not in self.dead]
        for name in self._forwarded_into.get(tensor.name, ()):
            readers += self.value_readers(self._tensors[name])
        return readers

    def forget_forwards(self) -> None:
        self.forward.clear()
        self._forwarded_into.clear()
        self.dead.clear()

    def carry(self, name: str, carrier: gs.Tensor) -> None:
        """(rewrite) the original tensor `name` is now affine(`carrier`): a fold that changes
        the carrier changes it too."""
        self._carried.setdefault(carrier.name, set()).add(name)

    def read_only_by(self, tensor: gs.Tensor, readers: Collection[gs.Node]) -> bool:
        """Nothing but `readers` reads `tensor`'s values (Shape readers see the same shape after
        the fold), and it is no graph output. A tensor that carries pendings is read by what
        reads them: changing it would change what they stand for."""
        ids = {id(n) for n in readers}
        original = self.stands_for.get(tensor.name)
        if original is not None and not self.read_only_by(original, readers):
            return False
        for name in self._carried.get(tensor.name, ()):
            stands = self._tensors.get(name)
            if stands is None or stands is tensor:
                continue
            if self.is_output(stands) or \
                    any(id(n) not in ids for n in self.value_readers(stands)):
                return False
        outputs = [tensor] + [self._tensors[n] for n in self._forwarded_into.get(tensor.name, ())]
        return not any(self.is_output(t) for t in outputs) and \
            all(id(n) in ids for n in self.value_readers(tensor))

    def producer(self, tensor: gs.Tensor) -> gs.Node | None:
        tensor = self.resolve(tensor)
        return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def fingerprint(value: Any) -> Any:
    """A hashable stand-in for a value holding arrays (each by dtype, shape and a digest)."""
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return ("array", data.dtype.str, data.shape, hashlib.sha1(data.tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(fingerprint(v) for v in value)
    return value


def ints(node: gs.Node, attr: str, input_index: int, ctx: Context) -> list[int] | None:
    """The integer list `attr` (older opsets) or input `input_index` (newer ones); [] when
    neither is given; None when the input is not constant."""
    if attr in node.attrs:
        value = node.attrs[attr]
        return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(node.inputs) > input_index and node.inputs[input_index].name:
        value = ctx.constant(node.inputs[input_index])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    return []


def dtype_of(tensor: gs.Tensor) -> np.dtype:
    dtype = getattr(tensor, "dtype", None)
    try:
        return np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    except TypeError:
        return np.dtype(np.float32)


def quoted(node: gs.Node) -> str:
    """A node's name in quotes, or, for an unnamed one, what it writes."""
    if node.name:
        return f"'{node.name}'"
    outputs = [t.name for t in node.outputs]
    return f"(writing '{outputs[0]}')" if outputs else "(unnamed)"


def named(node: gs.Node) -> str:
    """`Op 'name'`, as reports name a node."""
    return f"{node.op} {quoted(node)}"
