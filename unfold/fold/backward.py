"""Backward: make a tensor hold A(its value) by changing the constants that produce it, so an
affine that would sit after it can go (DESIGN.md rules 2, 5 and 6).

`request(tensor, affine, readers, ctx)` plans it. This module is the walk, and knows no op: at
each tensor on the way it checks that nothing but the way reads it (nothing else may see the
scaled values) and that it is no graph output; a constant it meets takes the affine where it is
read; a producing node goes to its op's handler (`Handler.back`, in transfer/), which says what
that op does with the affine: a layout op maps it back and walks on, a bias Add takes the shift,
a producer linear takes it into its weights (rule 2, `into_producer` below, shared by MatMul,
Gemm and Conv), an embedding Gather into its table (rule 6). A handler names the sub-rule it
uses (`Walk.use`); a skipped one refuses there. Used for a site's own affine (into its producer
or its embedding tables), for the residual rule's division of a branch by the stream's scale
(rule 5), and nothing else. Walks are cut at `MAX_STEPS` nodes so the whole pass stays linear in
the graph.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import Affine, FoldRejected, broadcasts_within, fold_into_producer
from unfold.fold.flow import Context, Fill, Replace, Rule, Write, named

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

PRODUCER = "producer"
EMBEDDING = "embedding"
PRODUCER_RULE = Rule(PRODUCER, "backward",
                     "A(x ⊛ W + c) = x ⊛ (W·s) + (s⊙c + b), back through layout ops")
EMBEDDING_RULE = Rule(EMBEDDING, "backward", "a⊙(T[ids] + P) + b = (a⊙T + b)[ids] + a⊙P",
                      frozenset({"Gather"}))
MAX_STEPS = 48

@dataclass
class Request:
    """The plan: `writes`, the constants the rewrite pass changes (computed here);
    `takes_shift` False when only the scale found a place; `rule` the last sink's sub-rule
    (producer or embedding)."""

    writes: list[Write] = field(default_factory=list)
    absorbed_by: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    takes_shift: bool = True
    rule: str = PRODUCER

    @property
    def event(self) -> str:
        if self.rule == EMBEDDING:
            tables = ", ".join(f"'{name}'" for name in self.absorbed_by)
            return f"folded into the embedding tables {tables}"
        return "; ".join(p for p in self.path if p.startswith(("folded into", "its shift"))) \
            or "; ".join(self.path)


class Refusal(str):
    """Why there is no plan; `deep` when a producer or table was reached and could not take it
    (worth reporting), not when the way there was blocked (a fork, a graph input)."""

    deep: bool = False


class Refused(Exception):
    """Raised by a step of the walk (a handler's `back` included) that cannot take the
    affine; `deep` as for `Refusal`."""

    def __init__(self, reason: str, deep: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.deep = deep


def deep(reason: str) -> Refused:
    """A refusal by the producer or table itself (reported), not by the way there."""
    return Refused(reason, deep=True)


@dataclass
class Walk:
    """One request in progress: the context, the plan it builds, the steps taken so far
    (shared with its trials, so the cut at MAX_STEPS holds for the whole request)."""

    ctx: Context
    plan: Request
    steps: list[int] = field(default_factory=lambda: [0])

    def into(self, tensor: gs.Tensor, affine: Affine, readers: Collection[gs.Node],
             want_shift: bool) -> bool:
        """Walk on: make `tensor` (read by `readers` only) hold affine(tensor); True when the
        shift found a place too (False: the scale only)."""
        return _request(tensor, affine, readers, self, want_shift)

    def use(self, rule: str) -> None:
        """The sink's sub-rule this step takes the affine by: refused when skipped."""
        if rule in self.ctx.skip:
            raise Refused(f"rule '{rule}' is skipped")
        self.plan.rule = rule

    def trial(self) -> Walk:
        """A walk of its own plan, to be adopted only if it works out."""
        return Walk(self.ctx, Request(rule=self.plan.rule), self.steps)

    def adopt(self, trial: Walk) -> None:
        self.plan.writes += trial.plan.writes
        self.plan.absorbed_by += trial.plan.absorbed_by
        self.plan.path += trial.plan.path
        self.plan.rule = trial.plan.rule


def request(tensor: gs.Tensor, affine: Affine, readers: Collection[gs.Node], ctx: Context,
            *, want_shift: bool = True) -> Request | Refusal:
    """A plan making `tensor` hold affine(tensor), or the reason there is none."""
    walk = Walk(ctx, Request())
    try:
        walk.plan.takes_shift = _request(tensor, affine, readers, walk, want_shift)
    except Refused as refused:
        refusal = Refusal(refused.reason)
        refusal.deep = refused.deep
        return refusal
    return walk.plan


def _request(tensor: gs.Tensor, affine: Affine, readers: Collection[gs.Node], walk: Walk,
             want_shift: bool) -> bool:
    if affine.is_identity():
        return True  # nothing to change
    walk.steps[0] += 1
    if walk.steps[0] > MAX_STEPS:
        raise Refused(f"no producer that can take it within {MAX_STEPS} ops")
    ctx = walk.ctx
    # a norm the analysis already sent back into its producer: its input stands for it now
    # (read by what read the norm's output: Context.value_readers counts those)
    tensor = ctx.resolve(tensor)
    if not ctx.read_only_by(tensor, readers):
        what = "a graph output" if ctx.is_output(tensor) else "read by other ops too"
        raise Refused(f"'{tensor.name}' is {what}")
    value = ctx.constant(tensor)
    if value is not None:  # a constant: replaced by affine(constant) where it is read
        if len(readers) != 1:
            raise Refused(f"the constant '{tensor.name}' is read by several ops")
        (reader,) = readers
        for slot, t in enumerate(reader.inputs):
            if t is tensor:
                replace_constant(reader, slot, affine, value, walk.plan, shift=want_shift)
        return want_shift and affine.has_shift
    producer = ctx.producer(tensor)
    if producer is None:
        raise Refused(f"'{tensor.name}' is a graph input")
    if id(producer) in ctx.site_nodes:  # a norm of its own: the pass moves it, not this
        raise Refused(f"it comes from the norm {named(producer)}")
    handler = ctx.handler(producer)
    if handler is None or handler.back is None:
        raise Refused(f"it comes from {producer.op} '{producer.name}', which cannot take a "
                      f"scale")
    return handler.back(producer, affine, walk, want_shift)


def _as(value: np.ndarray, rank: int) -> np.ndarray:
    return value.reshape((1,) * (rank - value.ndim) + value.shape) if value.ndim < rank \
        else value


def replace_constant(node: gs.Node, slot: int, affine: Affine, value: np.ndarray,
                     plan: Request, shift: bool, bound: list | None = None) -> None:
    """node.inputs[slot] (a constant of the data's rank or less) becomes affine(value). It
    keeps its shape, or, for an elementwise op's operand, may grow within `bound` (the op's
    output shape: a scalar α·x becoming a per-channel vector)."""
    rank = affine.rank
    full = _as(np.asarray(value, dtype=np.float64), rank)
    new = full * affine.scale + (affine.shift if shift else 0.0)
    if new.shape != full.shape and not (bound is not None and broadcasts_within(new, bound)):
        raise Refused("the affine would broadcast a constant to a larger shape")
    final = new.reshape(value.shape) if new.size == value.size else new
    plan.writes.append(Replace(node, slot, final.astype(value.dtype)))


@dataclass(frozen=True)
class ProducerLayout:
    """Where a producer linear keeps its output channels: the axis of its output they lie on,
    the axis of its weight, how many, and its bias (a slot it has; one it may be given)."""

    axis: int
    weight_axis: int
    channels: int
    has_bias_slot: bool
    can_add_bias: bool


def into_producer(node: gs.Node, affine: Affine, walk: Walk, want_shift: bool,
                  layout: ProducerLayout) -> bool:
    """Rule 2, A(x ⊛ W + c) = x ⊛ (W·s) + (s⊙c + b), for a MatMul, Gemm or Conv whose output
    channels `layout` gives (its `back` has taken the producer sub-rule, `Walk.use`); a
    producer without a bias slot it may fill takes the scale only."""
    ctx, what = walk.ctx, named(node)
    channels = layout.channels
    scale = affine.scale_vector(layout.axis, channels)
    shift = affine.shift_vector(layout.axis, channels) if affine.has_shift else \
        np.zeros(channels)
    if scale is None:
        raise deep(f"its producer {what} has its channels on axis {layout.axis}, which is not "
                   f"the only axis the scale varies along")
    takes_shift = want_shift and affine.has_shift and layout.can_add_bias and shift is not None
    if want_shift and affine.has_shift and shift is None:
        raise deep(f"the shift varies along more than the channels of {what}")
    use_shift = shift if takes_shift and shift is not None else np.zeros(channels)
    try:
        folded = ctx.computed(fold_into_producer, (node.inputs[1], node.inputs[2]
                                                   if layout.has_bias_slot else None),
                              scale, use_shift, layout.weight_axis)
    except FoldRejected as rejected:
        raise deep(f"folding into {what}: {rejected.reason}") from None

    walk.plan.writes.append(Replace(node, 1, folded.weight, (folded.max_abs_weight_before,
                                                             folded.max_abs_weight_after)))
    if layout.has_bias_slot:
        walk.plan.writes.append(Replace(node, 2, folded.bias))
    elif layout.can_add_bias and (takes_shift or np.any(folded.bias != 0)):
        walk.plan.writes.append(Fill(node, 2, folded.bias, f"{node.name}_bias"))
    walk.plan.absorbed_by.append(node.name)
    walk.plan.path.append(f"folded into its producer {what}")
    return takes_shift
