"""The fold's knowledge of each op, in one registry: for each op family a transfer function
(what a pending affine on an input becomes on the output, or why it stops there) or a sink
(what absorbs it). A new op is one function here and its test.

`plan_node(node, pendings, ctx)` tries the rules registered for the node's op in order; the
first `Move` wins; otherwise the node stops the affine (the first reason given, or that the op
is not known to commute). Norm sites go through `norm.plan_site`; backward.py's producer and
embedding rules are reached from there and from the residual rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unfold.fold import backward
from unfold.fold.flow import Context, Move, Pending, Stop
from unfold.fold.graph import SHAPE_READERS
from unfold.fold.transfer import (
    activation,
    attention,
    concat,
    constant_op,
    conv,
    gate,
    layout,
    linear,
    negate,
    norm,
    pad,
    pool,
    residual,
    select,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

PlanFunction = Callable[["gs.Node", dict[int, Pending], Context], Move | Stop | None]


@dataclass(frozen=True)
class Rule:
    name: str  # what --skip takes
    kind: str  # "sink": absorbs the affine; "transfer": carries it on; "backward": into producers
    ops: frozenset[str]
    algebra: str
    plan: PlanFunction | None = None


def _never(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> None:
    return None


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule(norm.NAME, "transfer", frozenset({"(norm sites)"}), norm.ALGEBRA),
    Rule(backward.PRODUCER, "backward", frozenset({"MatMul", "Gemm", "Conv"}),
         "A(x ⊛ W + c) = x ⊛ (W·s) + (s⊙c + b), back through layout ops"),
    Rule(backward.EMBEDDING, "backward", frozenset({"Gather"}),
         "a⊙(T[ids] + P) + b = (a⊙T + b)[ids] + a⊙P"),
    Rule(linear.CONSUMER, "sink", linear.OPS, linear.ALGEBRA[linear.CONSUMER], linear.plan),
    Rule(conv.NAME, "sink", conv.OPS, conv.ALGEBRA, conv.plan),
    Rule(linear.TOKEN, "transfer", linear.OPS, linear.ALGEBRA[linear.TOKEN], _never),
    Rule(attention.NAME, "transfer", attention.OPS, attention.ALGEBRA, attention.plan),
    Rule(layout.NAME, "transfer", layout.OPS, layout.ALGEBRA, layout.plan),
    Rule(select.NAME, "transfer", select.OPS, select.ALGEBRA, select.plan),
    Rule(pad.NAME, "transfer", pad.OPS, pad.ALGEBRA, pad.plan),
    Rule(pool.NAME, "transfer", pool.OPS, pool.ALGEBRA, pool.plan),
    Rule(concat.NAME, "transfer", concat.OPS, concat.ALGEBRA, concat.plan),
    Rule(constant_op.NAME, "transfer", constant_op.OPS, constant_op.ALGEBRA, constant_op.plan),
    Rule(residual.NAME, "transfer", residual.OPS, residual.ALGEBRA, residual.plan),
    Rule(gate.NAME, "transfer", gate.OPS, gate.ALGEBRA, gate.plan),
    Rule(activation.NAME, "transfer", activation.OPS, activation.ALGEBRA, activation.plan),
    Rule(negate.NAME, "transfer", negate.OPS, negate.ALGEBRA, negate.plan),
)}

_BY_OP: dict[str, list[Rule]] = {}
for _rule in RULES.values():
    if _rule.plan is None or _rule.plan is _never:
        continue
    for _op in _rule.ops:
        _BY_OP.setdefault(_op, []).append(_rule)


def plan_node(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop:
    """The first rule's Move for all of the node's pendings; failing that, where several
    meet (Q and Kᵀ both shifted), the first Move for one of them alone (the others are then
    materialized for it); else the Stop with the first reason given."""
    if node.op in SHAPE_READERS:  # they see the shape only, which no affine changes
        return Move("shape", "", tuple(pendings), {})
    found = _plan_all(node, pendings, ctx)
    if isinstance(found, Move) or len(pendings) < 2:
        return found
    for slot in sorted(pendings):
        alone = _plan_all(node, {slot: pendings[slot]}, ctx)
        if isinstance(alone, Move):
            for other in pendings:
                if other not in alone.consumes:
                    refused = _plan_all(node, {other: pendings[other]}, ctx)
                    if isinstance(refused, Stop):
                        alone.declined[other] = refused.reason
            return alone
    return found


def _plan_all(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop:
    reasons = []
    for rule in _BY_OP.get(node.op, []):
        if rule.name in ctx.skip:
            reasons.append(f"rule '{rule.name}' is skipped")
            continue
        plan = rule.plan(node, pendings, ctx)  # type: ignore[misc]
        if isinstance(plan, Move):
            return plan
        if isinstance(plan, Stop):
            reasons.append(plan.reason)
    if reasons:
        return Stop(reasons[0])
    return Stop(f"{node.op} does not commute with a per-channel affine")


__all__ = ["RULES", "Rule", "plan_node"]
