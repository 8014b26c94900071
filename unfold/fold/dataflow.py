"""The fold as one dataflow pass (DESIGN.md, "How the fold runs"), in three sweeps over the
nodes in topological order, each linear in the graph:

1. analysis, forward: every norm site starts (or composes into) a pending affine; each node a
   pending reaches is planned by its op's handler (`transfer.plan_node`):
   it carries the affine to its outputs, absorbs it, or stops it, with the new constants it
   would write (`Context.computed`: a fold that would overflow a weight stops here). Nothing
   changes yet.
2. decision, backward: for every tensor with a pending, each consumer edge is decided on its
   own from what the plans downstream would cost, counted in ops added: an edge that ends
   absorbed costs 0; one that stops needs the affine materialized (one Mul, one Add, shared by
   every edge that needs it; at a graph output a little less, as DESIGN allows it there). An
   edge is carried on only where that costs less than materializing.
3. rewrite, forward: the chosen moves are planned again on the graph as it now is (the edges
   the decision cut change what reaches a node; the carriers are real tensors now) and
   applied, their constants the very arrays the analysis computed unless a constant they read
   was replaced since; every pending whose original tensor is still read, or is a graph
   output, is materialized from its carrier, once.

The report is built from what the rewrite did: per site, where its affine went (`path`), what
absorbed it, and for what stayed, the reader that needed the true values and why.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold import backward
from unfold.fold.algebra import Affine
from unfold.fold.cleanup import layout_envelope
from unfold.fold.flow import (
    Carried,
    Context,
    Fill,
    Move,
    Pending,
    Replace,
    Stop,
    Write,
    dtype_of,
    fingerprint,
    named,
)
from unfold.fold.graph import (
    SHAPE_READERS,
    Names,
    constant_operand,
    is_floating,
    redirect_readers,
    replace_weight,
)
from unfold.fold.report import SiteReport
from unfold.fold.sites import BATCH_NORM, Site, find_affine_sites
from unfold.fold.transfer import HANDLERS, plan_node, plan_site
from unfold.fold.transfer.norm import START

OUTPUT_DISCOUNT = 0.25  # a materialization at a graph output is what DESIGN allows: prefer it
MUL_PREMIUM = 0.01  # ties between as many ops: fewer Muls
FAN_OUT = "fan-out: materialized once here rather than carried into every reader"

Edge = tuple[str, int, int]  # (tensor name, id of the reading node, input slot)


@dataclass
class _Log:
    """What the rewrite did, per site (by name)."""

    path: dict[str, list[str]] = field(default_factory=dict)
    absorbed: dict[str, list[str]] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    ends: dict[str, list[str]] = field(default_factory=dict)  # "output" | "interior"
    merged_into: dict[str, str] = field(default_factory=dict)
    weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    scale_range: dict[str, tuple[float, float]] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)
    site_ops: dict[str, int] = field(default_factory=dict)  # each site's own node count
    # where the rewrite, given the inputs the analysis planned with, planned otherwise
    replanned: list[str] = field(default_factory=list)

    def add(self, table: dict[str, list[str]], site: str, text: str) -> None:
        if text and text not in table.setdefault(site, []):
            table[site].append(text)


class _Rewriter:
    """Applies the plans' writes (flow.Replace, Fill, Before), and materializes pendings."""

    def __init__(self, ctx: Context, names: Names, log: _Log) -> None:
        self.ctx, self.graph, self.names, self.log = ctx, ctx.graph, names, log
        self.site: str | None = None  # whose move is being applied
        self._made: dict[tuple, gs.Constant] = {}  # new values of shared constants
        self._shared: set[int] = set()  # constants seen with several readers
        self.actual: dict[str, Carried] = {}  # the pendings placed so far (the rewrite's)

    def write(self, change: Write, arrived: Mapping[int, Carried]) -> None:
        """Apply one of a plan's writes; `arrived`: the pendings that reached its node."""
        if isinstance(change, Replace):
            self.replace_input(change.node, change.slot, change.value, change.weights)
        elif isinstance(change, Fill):
            self.set_input(change.node, change.slot, change.value, change.base)
            change.node.attrs.update(change.attrs)
        else:
            carrier = arrived[change.slot].carrier
            assert carrier is not None
            change.node.inputs[change.slot] = self.materialize(
                carrier, change.affine, dtype_of(carrier), base=change.base)

    def replace_input(self, node: gs.Node, slot: int, value: np.ndarray,
                      weights: tuple[float, float] | None = None) -> None:
        old = node.inputs[slot]
        if isinstance(old, gs.Constant) and (len(old.outputs) > 1 or id(old) in self._shared):
            self._shared.add(id(old))
            # a weight several nodes share (ALBERT's layers, a bias read thrice): where two
            # of them get the same new value, they share the new constant too
            key = (id(old), fingerprint(value))
            shared = self._made.get(key)
            if shared is not None and np.array_equal(shared.values, value):
                node.inputs[slot] = shared
                if not old.outputs:
                    old.values = np.empty(0, dtype=old.dtype)
            else:
                replace_weight(node, slot, value, self.names)
                self._made[key] = node.inputs[slot]
        else:
            replace_weight(node, slot, value, self.names)
        if weights is not None and self.site is not None:
            before, after = self.log.weights.get(self.site, (0.0, 0.0))
            self.log.weights[self.site] = (max(before, weights[0]), max(after, weights[1]))

    def set_input(self, node: gs.Node, slot: int, value: np.ndarray, base: str) -> None:
        constant = gs.Constant(self.names.new(base), value)
        if slot < len(node.inputs):
            node.inputs[slot] = constant
        else:
            assert slot == len(node.inputs), (node.name, slot)
            node.inputs.append(constant)

    def _scale_into_producer(self, source: gs.Tensor, scale: np.ndarray) -> bool:
        """The scale into the constant of the Mul making `source` (`_scale_taker`); False,
        touching nothing, where there is none."""
        taker = _scale_taker(source, scale, self.ctx)
        if taker is None:
            return False
        producer, slot, merged = taker
        self.replace_input(producer, slot, merged)
        return True

    def materialize(self, source: gs.Tensor, affine: Affine, dtype: np.dtype, base: str,
                    out: gs.Tensor | None = None) -> gs.Tensor:
        """out (a new tensor unless given) = affine(source): a Mul and an Add, each left out
        when neutral (an Identity when both are), constants without leading 1-dims."""
        if out is None:
            out = gs.Variable(self.names.new(source.name), dtype=source.dtype,
                              shape=source.shape)
        ops = [(op, value) for op, value, neutral in (("Mul", affine.scale, 1.0),
                                                      ("Add", affine.shift, 0.0))
               if np.any(value != neutral)]
        if ops and ops[0][0] == "Mul" and self._scale_into_producer(source, affine.scale):
            ops = ops[1:]
        if not ops:
            self.graph.nodes.append(gs.Node("Identity", self.names.new(base), inputs=[source],
                                            outputs=[out]))
            return out
        current = source
        for i, (op, value) in enumerate(ops):
            result = out if i == len(ops) - 1 else gs.Variable(
                self.names.new(out.name), dtype=out.dtype, shape=out.shape)
            while value.ndim > 1 and value.shape[0] == 1:
                value = value[0]
            constant = gs.Constant(self.names.new(f"{base}_{op.lower()}"),
                                   np.asarray(value).astype(dtype))
            self.graph.nodes.append(gs.Node(op, self.names.new(f"{base}_{op.lower()}"),
                                            inputs=[current, constant], outputs=[result]))
            current = result
        return out


def _edges(tensor: gs.Tensor) -> list[tuple[gs.Node, int]]:
    seen: set[tuple[int, int]] = set()
    edges = []
    for node in tensor.outputs:
        for slot, t in enumerate(node.inputs):
            if t is tensor and (id(node), slot) not in seen:
                seen.add((id(node), slot))
                edges.append((node, slot))
    return edges


@dataclass
class FoldResult:
    reports: list[SiteReport]
    # per site (by name), the layout ops around it that exist for it alone (cleanup.py's
    # layout_envelope): the tidy-up after the pass must remove them with the site
    envelopes: dict[str, list[gs.Node]] = field(default_factory=dict)
    # where the rewrite planned otherwise than the decision had (FoldReport.replanned)
    replanned: list[str] = field(default_factory=list)


def fold_graph(graph: gs.Graph, names: Names, *, skip: Collection[str] = (),
               max_scale: float | None = None) -> FoldResult:
    """Fold every offline norm site of `graph` (in place); the graph needs cleanup after."""
    graph.toposort()
    order = list(graph.nodes)
    sites = find_affine_sites(graph)
    ctx = Context(graph, skip=skip, max_scale=max_scale, handlers=HANDLERS,
                  site_nodes=[n for s in sites for n in s.nodes])
    envelopes = {s.name: envelope for s in sites
                 if (envelope := layout_envelope(s.input, s.output, ctx.graph_outputs))}
    site_at = {id(s.nodes[0]): s for s in sites}
    inside = {id(n) for s in sites for n in s.nodes[1:]}
    plans, pend, passes_alone = _analyse(order, site_at, inside, ctx)
    unit_of = {id(n): id(s.nodes[0]) for s in sites for n in s.nodes}
    chosen, because = _decide(order, unit_of, plans, pend, passes_alone, ctx)
    log = _Log(site_ops={s.name: len(s.nodes) for s in sites})
    _rewrite(order, site_at, inside, chosen, because, ctx, names, log, plans, pend)
    ctx.forget_computed()  # (the new weights are the graph's now)
    return FoldResult(_reports(sites, log), envelopes, log.replanned)


# --- 1. analysis ------------------------------------------------------------------------------

def _analyse(order: list[gs.Node], site_at: dict[int, Site], inside: set[int], ctx: Context
             ) -> tuple[dict[int, Move | Stop], dict[str, Carried], set[Edge]]:
    """Plans for every node a pending reaches (a site's under its first node), the pending on
    every tensor, as if every edge carried it, and where pendings meet (a residual Add of
    two), the inputs whose pending would pass that node alone at no cost (a pure shift)."""
    plans: dict[int, Move | Stop] = {}
    pend: dict[str, Carried] = {}
    passes_alone: set[Edge] = set()
    for node in order:
        if id(node) in inside:
            continue
        site = site_at.get(id(node))
        if site is not None:
            incoming = pend.get(site.current_input().name)
            plan = plan_site(site, incoming, ctx)
            plans[id(node)] = plan
            if isinstance(plan, Stop):  # the incoming edge stops: the site starts afresh
                plan = plan_site(site, None, ctx)
        else:
            pendings = {slot: pend[t.name] for slot, t in enumerate(node.inputs)
                        if t.name in pend}
            if not pendings:
                continue
            plan = plan_node(node, pendings, ctx)
            plans[id(node)] = plan
            if isinstance(plan, Move) and len(plan.consumes) > 1:
                for slot in plan.consumes:
                    alone = plan_node(node, {slot: pendings[slot]}, ctx)
                    if isinstance(alone, Move) and slot in alone.consumes and alone.cost == 0:
                        passes_alone.add((node.inputs[slot].name, id(node), slot))
        if isinstance(plan, Move):
            for name, pending in plan.outputs.items():
                gone = _gone(pending)
                if not gone:
                    pend[name] = pending
                if site is not None and plan.carrier_slot is None and \
                        ((gone and plan.deletes) or plan.absorbed_by):
                    # gone back into its producer (its shift too, or carried on): its input
                    # is its output's carrier now (a composed norm is not: what reads it will
                    # read the pending's carrier)
                    assert plan.carrier_tensor is not None
                    ctx.gone_back(name, plan.carrier_tensor, plan.deletes)
    ctx.forget_forwards()  # the rewrite changes the graph itself
    return plans, pend, passes_alone


# --- 2. decision ------------------------------------------------------------------------------

def _gone(pending: Carried) -> bool:
    """An identity affine: nothing of it is left (absorbed); the tensor is simply its carrier."""
    return isinstance(pending, Pending) and pending.affine.is_identity()


def _scale_taker(source: gs.Tensor, scale: np.ndarray, ctx: Context
                 ) -> tuple[gs.Node, int, np.ndarray] | None:
    """Where `source` is a Mul by a constant that only a materialization on it reads (DyT's
    tanh(α·x), a constant Mul before an activation), the scale goes into that constant,
    s⊙(x·c) = x·(c⊙s): one Mul fewer than a Mul of its own (which a second fold would otherwise
    compose). (the Mul, its constant's slot, the new constant); None anywhere else. The
    decision prices a materialization by it and the rewrite does what it says."""
    if len(source.inputs) != 1 or len(source.outputs) != 1 or ctx.is_output(source):
        return None
    producer = source.inputs[0]
    if producer.op != "Mul" or id(producer) in ctx.site_nodes:
        return None
    operand = constant_operand(producer)
    if operand is None or not is_floating(operand[1].dtype):
        return None
    slot, value = operand
    merged = np.asarray(value, np.float64) * np.asarray(scale, np.float64)
    shape = ctx.shape(source)
    if shape is None or merged.ndim > len(shape) or any(
            m != 1 and m != d for m, d in zip(merged.shape[::-1], shape[::-1], strict=False)):
        return None  # it would broadcast the product beyond the tensor's own shape
    with np.errstate(over="ignore", invalid="ignore"):
        cast = merged.astype(value.dtype)
    return (producer, slot, cast) if np.all(np.isfinite(cast)) else None


def _materialize_cost(tensor: gs.Tensor, pending: Carried, ctx: Context) -> float:
    """The ops materializing `pending` on `tensor` adds: its Mul (none where the tensor comes
    from a constant Mul that takes the scale, `_scale_taker`) and its Add; a
    Mul counts a little more than an Add, so that of two ways with as many ops the one that
    leaves Adds (what DESIGN's minima are: a shift with no bias to go into) wins."""
    if not isinstance(pending, Pending):  # a per-query constant can never be materialized
        return math.inf
    affine = pending.affine
    scale = float(affine.has_scale) * (
        0.0 if _scale_taker(tensor, affine.scale, ctx) is not None else 1.0 + MUL_PREMIUM)
    ops = scale + float(affine.has_shift)
    return ops - OUTPUT_DISCOUNT if ctx.is_output(tensor) and ops else ops


def _decide(order: list[gs.Node], unit_of: dict[int, int], plans: dict[int, Move | Stop],
            pend: dict[str, Carried], passes_alone: set[Edge], ctx: Context
            ) -> tuple[dict[Edge, bool], dict[Edge, str]]:
    """For every consumer edge of a pending: carry it on or not; for those not carried on,
    why (the reader's own reason, or what stops the affine further down that way)."""
    cost: dict[str, float] = {}
    why: dict[str, str] = {}  # what keeps the pending on a tensor from going all the way
    chosen: dict[Edge, bool] = {}
    because: dict[Edge, str] = {}
    for node in reversed(order):
        for tensor in node.outputs:
            pending = pend.get(tensor.name)
            if pending is None:
                continue
            blocked = None
            if ctx.is_output(tensor):
                blocked = f"'{tensor.name}' is a graph output"
            edges = []
            for reader, slot in _edges(tensor):
                edge = (tensor.name, id(reader), slot)
                unit = unit_of.get(id(reader), id(reader))
                plan = plans.get(unit)
                if unit != id(reader):  # a site's other node reading its input (RepBN's α·x)
                    if isinstance(plan, Move) and any(d is reader for d in plan.deletes):
                        chosen[edge] = True  # goes with the site: no cost of its own
                        continue
                    plan = None
                if not isinstance(plan, Move) or slot not in plan.consumes:
                    chosen[edge] = False
                    because[edge] = f"reader {named(reader)}: " + (
                        plan.reason if isinstance(plan, Stop) else _declined(plan, slot))
                    blocked = blocked or because[edge]
                    continue
                c, later = 0.0, ""
                if slot == min(plan.consumes):
                    c = plan.cost + (0.0 if plan.own_outputs else
                                     sum(cost.get(name, 0.0) for name in plan.outputs))
                    # where affines meet (a residual Add of two pendings), the others' would
                    # otherwise be materialized each: what merging saves is credited here
                    # (nothing for one that passes the Add alone at no cost: a pure shift)
                    for other in plan.consumes:
                        joined = reader.inputs[other]
                        if other != slot and joined.name in pend and joined is not tensor \
                                and len(_edges(joined)) == 1 \
                                and (joined.name, id(reader), other) not in passes_alone:
                            c -= _materialize_cost(joined, pend[joined.name], ctx)
                    later = next((why[name] for name in plan.outputs if why.get(name)), "")
                    if plan.leaves and not later:
                        later = plan.leaves
                edges.append((edge, c, later))
            m = _materialize_cost(tensor, pending, ctx)
            total = sum(c for _, c, _ in edges)
            if blocked is not None or total >= m:
                for edge, c, later in edges:
                    chosen[edge] = c <= 0
                    if c > 0:
                        because[edge] = later
                cost[tensor.name] = m
                why[tensor.name] = blocked or next((later for _, c, later in edges if c > 0),
                                                   "")
            else:
                for edge, _, _ in edges:
                    chosen[edge] = True
                cost[tensor.name] = total
                why[tensor.name] = next((later for _, c, later in edges if later), "")
    return chosen, because


def _declined(plan: Move | None, slot: int) -> str:
    """Why a reader does not take the pending on input `slot` although it moves others."""
    default = "it takes it on another input only"
    return plan.declined.get(slot, default) if plan is not None else default


# --- 3. rewrite -------------------------------------------------------------------------------

def _rewrite(order: list[gs.Node], site_at: dict[int, Site], inside: set[int],
             chosen: dict[Edge, bool], because: dict[Edge, str], ctx: Context,
             names: Names, log: _Log, plans: dict[int, Move | Stop],
             pend: dict[str, Carried]) -> None:
    graph = ctx.graph
    rw = _Rewriter(ctx, names, log)
    tensors = graph.tensors()
    actual: dict[str, Carried] = rw.actual
    stops: dict[tuple[str, int], str] = {}  # (tensor, reader) -> why the reader needs values

    def arrived_at(node: gs.Node) -> dict[int, Carried]:
        """The pendings this node gets; why it does not get the others, noted."""
        arrived = {}
        for slot, t in enumerate(node.inputs):
            if t.name not in actual:
                continue
            if chosen.get((t.name, id(node), slot), True):
                arrived[slot] = actual[t.name]
            elif node.op not in SHAPE_READERS:
                stops[(t.name, id(node))] = because.get((t.name, id(node), slot)) or FAN_OUT
        return arrived

    for node in order:
        if id(node) in inside:
            continue
        site = site_at.get(id(node))
        if site is not None:
            arrived = arrived_at(node)
            incoming = arrived.get(site.slot)
            plan = plan_site(site, incoming, ctx)
            analysed = plans.get(id(node))
            # (comparable where the analysis planned it with an incoming pending too: its
            # Stops are only ever that, and its Moves consume the site's input slot then)
            if analysed is not None and (incoming is not None) == (
                    isinstance(analysed, Stop) or bool(analysed.consumes)):
                _compare(node, analysed, plan, log)
            if isinstance(plan, Stop):
                assert incoming is not None
                stops[(site.current_input().name, id(node))] = \
                    f"norm '{site.name}': {plan.reason}"
                arrived, incoming = {}, None
                plan = plan_site(site, None, ctx)
            assert isinstance(plan, Move)
            if plan.rule == START and _stays(site, plan, chosen, ctx):
                _note_stayed(site, chosen, because, ctx, log)
                if plan.refused:
                    log.add(log.refused, site.name, plan.refused)
                continue
            if incoming is not None:
                log.merged_into.setdefault(site.name, incoming.origins[0])
            _execute(node, plan, arrived, actual, tensors, rw, log)
            continue
        arrived = arrived_at(node)
        if not arrived:
            continue
        plan = plan_node(node, arrived, ctx)
        analysed = plans.get(id(node))
        if analysed is not None and set(arrived) == {
                slot for slot, t in enumerate(node.inputs) if t.name in pend}:
            _compare(node, analysed, plan, log)
        if isinstance(plan, Stop):
            for slot in arrived:
                stops[(node.inputs[slot].name, id(node))] = \
                    f"reader {named(node)}: {plan.reason}"
            continue
        for slot, t in enumerate(node.inputs):
            if slot in arrived and slot not in plan.consumes:
                stops[(t.name, id(node))] = f"reader {named(node)}: " + \
                    _declined(plan, slot)
        _execute(node, plan, arrived, actual, tensors, rw, log)
    _materialize_what_is_read(actual, tensors, stops, ctx, rw, log)


def _compare(node: gs.Node, analysed: Move | Stop, rewritten: Move | Stop, log: _Log) -> None:
    """Note where the rewrite, given the inputs the decision planned with, cannot do what the
    decision priced: a move that became a stop, a norm priced as gone back into its producer
    or tables that did not (the graph as rewritten, its real carriers, showed what the analysis
    could not see). Another move found instead (a producer the real carrier reaches) is no
    loss and is not noted."""
    if not isinstance(analysed, Move):
        return
    backward_rules = (backward.PRODUCER, backward.EMBEDDING)
    if isinstance(rewritten, Stop):
        found = f"a stop ({rewritten.reason})"
    elif analysed.rule in backward_rules and rewritten.rule not in backward_rules:
        found = f"rule '{rewritten.rule}'"
    else:
        return
    log.replanned.append(f"{named(node)}: decided by rule '{analysed.rule}', rewritten by "
                         f"{found}")


def _stays(site: Site, plan: Move, chosen: dict[Edge, bool], ctx: Context) -> bool:
    """A site no reader takes its affine from stays as it is, unless it is a longer chain than
    the one Mul and one Add its affine needs (the authors' Div-by-Sqrt form: composed)."""
    out = site.output
    if any(chosen.get((out.name, id(r), s), False) for r, s in _edges(out)
           if r.op not in SHAPE_READERS):
        return False
    pending = plan.outputs[out.name]
    assert isinstance(pending, Pending), "a site's plan carries an affine"
    return site.kind == BATCH_NORM or len(site.nodes) <= pending.affine.ops()


def _note_stayed(site: Site, chosen: dict[Edge, bool], because: dict[Edge, str],
                 ctx: Context, log: _Log) -> None:
    out = site.output
    if ctx.is_output(out):  # what it is at a graph output is allowed; its readers read that
        log.add(log.ends, site.name, "output")
        return
    log.add(log.ends, site.name, "interior")
    for reader, slot in _edges(out):
        if reader.op not in SHAPE_READERS and not chosen.get((out.name, id(reader), slot)):
            log.add(log.reasons, site.name, because.get((out.name, id(reader), slot))
                    or FAN_OUT)


def _execute(node: gs.Node, plan: Move, arrived: dict[int, Carried],
             actual: dict[str, Carried], tensors: dict[str, gs.Tensor], rw: _Rewriter,
             log: _Log) -> None:
    primary = next((p.origins[0] for p in arrived.values()), None)
    for other in arrived.values():  # affines that met here: reported as one
        if primary is not None and other.origins[0] != primary:
            log.merged_into.setdefault(other.origins[0], primary)
    if plan.deletes:  # a norm composed, or merged: its output rides on an input's carrier
        if plan.carrier_slot is not None:
            carrier = arrived[plan.carrier_slot].carrier
        else:
            carrier = plan.carrier_tensor
        assert carrier is not None
        for dead in plan.deletes:
            dead.outputs.clear()
            dead.inputs.clear()
        for name, pending in plan.outputs.items():
            primary = primary or pending.origins[0]
            placed = replace(pending, carrier=carrier)
            if _gone(pending):
                _forward(tensors[name], carrier, rw.graph)
            else:
                actual[name] = placed
                rw.ctx.carry(name, carrier)
    else:
        for slot in plan.consumes:
            carrier = arrived[slot].carrier
            assert carrier is not None
            node.inputs[slot] = carrier
        for name, pending in plan.outputs.items():
            original = tensors[name]
            producer = original.inputs[0]
            fresh = gs.Variable(rw.names.new(name), dtype=original.dtype, shape=original.shape)
            producer.outputs[producer.outputs.index(original)] = fresh
            rw.ctx.stand_in(fresh, original)
            actual[name] = replace(pending, carrier=fresh)
            rw.ctx.carry(name, fresh)
    if primary is None:
        return
    rw.site = primary
    for change in plan.writes:
        rw.write(change, arrived)
    rw.site = None
    log.add(log.path, primary, plan.event)
    for absorber in plan.absorbed_by:
        log.add(log.absorbed, primary, absorber)
    if plan.leaves:  # what stays is charged like a materialization (see _charged)
        leaving = [p for p in arrived.values() if isinstance(p, Pending)]
        for origin in _charged(leaving[0], log.site_ops, need=max(int(plan.cost), 1)) \
                if leaving else [primary]:
            log.add(log.ends, origin, "interior")
            log.add(log.reasons, origin, plan.leaves)
    if plan.refused:
        log.add(log.refused, primary, plan.refused)
    for pending in list(arrived.values()) + list(plan.outputs.values()):
        if isinstance(pending, Pending) and pending.affine.has_scale:
            low, high = pending.affine.channel_range()
            old = log.scale_range.get(primary, (low, high))
            log.scale_range[primary] = (min(old[0], low), max(old[1], high))
        for note in pending.stayed:
            log.add(log.path, primary, note)


def _forward(tensor: gs.Tensor, carrier: gs.Tensor, graph: gs.Graph) -> None:
    """`tensor` is now simply `carrier`: its readers read the carrier; a graph output keeps its
    name (the carrier's producer makes it)."""
    if tensor.name in {t.name for t in graph.outputs}:
        producer = carrier.inputs[0] if len(carrier.inputs) == 1 else None
        if producer is None or carrier.name in {t.name for t in graph.outputs}:
            graph.nodes.append(gs.Node("Identity", f"{tensor.name}_identity",
                                       inputs=[carrier], outputs=[tensor]))
            return
        producer.outputs[producer.outputs.index(carrier)] = tensor
        redirect_readers(carrier, tensor)
        return
    redirect_readers(tensor, carrier)


def _materialize_what_is_read(actual: dict[str, Carried], tensors: dict[str, gs.Tensor],
                              stops: dict[tuple[str, int], str], ctx: Context,
                              rw: _Rewriter, log: _Log) -> None:
    """Every pending whose original tensor is still read, or is a graph output, becomes one Mul
    and one Add from its carrier, producing that tensor."""
    first_reason: dict[str, str] = {}
    for (tensor_name, _), reason in stops.items():
        first_reason.setdefault(tensor_name, reason)
    for name, pending in actual.items():
        tensor = tensors[name]
        carrier = pending.carrier
        assert carrier is not None
        for reader in [n for n in tensor.outputs if n.op in SHAPE_READERS]:
            for slot, t in enumerate(reader.inputs):
                if t is tensor:
                    reader.inputs[slot] = carrier
        readers = list(tensor.outputs)
        if not readers and not ctx.is_output(tensor):
            continue
        site = pending.origins[0]
        if not isinstance(pending, Pending):
            raise AssertionError(f"an unknown per-query constant reached a reader at "
                                 f"'{name}' (site '{site}'): the decision pass should have "
                                 f"prevented this")
        rw.materialize(carrier, pending.affine, dtype_of(carrier),
                       base=f"{site}_at_{name}", out=tensor)
        if ctx.is_output(tensor):  # DESIGN's allowed materialization: every site in it
            for origin in pending.origins:
                log.add(log.ends, origin, "output")
            log.add(log.path, site, f"materialized at the graph output '{name}'")
            continue
        # (a reader that came to read it later, through a norm that started afresh on it,
        # has no entry: the reason is then the one that norm's own edge was given)
        known = first_reason.get(name, FAN_OUT)
        why = [stops.get((name, id(reader))) or known for reader in readers]
        for origin in _charged(pending, log.site_ops):
            log.add(log.ends, origin, "interior")
            for reason in why:
                log.add(log.reasons, origin, reason)


def _charged(pending: Pending, site_ops: dict[str, int], need: int | None = None
             ) -> list[str]:
    """The sites a materialization inside the graph is charged to: the ones composed last,
    as many as own the ops it needs (a norm composed into a LayerScale, whose one Mul then
    carries both, is gone: the LayerScale's Mul is what stays)."""
    if need is None:
        need = pending.affine.ops()
    credit, charged = 0, []
    for origin in reversed(pending.origins):
        charged.append(origin)
        credit += site_ops.get(origin, 0)
        if credit >= need:
            break
    return charged


# --- the report -------------------------------------------------------------------------------

def _reports(sites: list[Site], log: _Log) -> list[SiteReport]:
    reports = []
    for site in sites:
        name = site.name
        ends = log.ends.get(name, [])
        report = SiteReport(name=name, kind=site.kind, channels=site.channels,
                            absorbed_by=log.absorbed.get(name, []),
                            reasons=log.reasons.get(name, []), path=log.path.get(name, []),
                            merged_into=log.merged_into.get(name))
        if "interior" in ends and site.secondary:
            report.status = "kept"  # a per-channel scale that is no norm (LayerScale): as is
        elif "interior" in ends:
            report.status = "partial" if report.absorbed_by else "stayed"
        elif "output" in ends:
            report.status = "materialized"
        else:
            report.status = "folded"
        if report.status == "folded":
            report.reasons = []  # what stopped it on one way is moot where another took it
        else:
            report.reasons = log.refused.get(name, []) + report.reasons
        before, after = log.weights.get(name, (0.0, 0.0))
        report.max_abs_weight_before, report.max_abs_weight_after = before, after
        if name in log.scale_range:
            report.scale_range = list(log.scale_range[name])
        reports.append(report)
    for report in reports:
        if report.merged_into is not None:
            report.path.append(f"composed into '{report.merged_into}'")
    return reports
