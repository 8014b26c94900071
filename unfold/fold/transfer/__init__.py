"""The fold's knowledge of each op, in one registry: `HANDLERS` maps each (domain, op) the fold
knows to exactly one `Handler` (flow.py), which lives in the module of its op family here and
says both what a pending affine on an input becomes on the output (`prep`) and what the op does
with an affine asked of its output from below (`back`, for backward.py's walk). A new op is one
handler in one module, and its test.

The dispatchers are here: `plan_node(node, pendings, ctx)` hands the node to its op's handler
(the one place `--skip` is applied forward: a Move whose sub-rule is skipped becomes a Stop, as
does one that would leave an affine its tensor's type cannot hold);
backward.py's walk reaches `back` through `Context.handler` (and skips there, `Walk.use`). Norm
sites are not ops: the driver hands them to `plan_site`, which skips the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from unfold.fold import backward
from unfold.fold.flow import Carried, Context, Handler, Move, Pending, Rule, Stop, dtype_of
from unfold.fold.graph import SHAPE_READERS
from unfold.fold.transfer import (
    activation,
    arithmetic,
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

    from unfold.fold.sites import Site

FAMILIES: tuple[Handler, ...] = (
    linear.HANDLER, conv.HANDLER, layout.HANDLER, select.HANDLER, pad.HANDLER, pool.HANDLER,
    concat.HANDLER, arithmetic.HANDLER, attention.HANDLER, activation.HANDLER, negate.HANDLER,
)


def _registry(families: tuple[Handler, ...]) -> dict[tuple[str, str], Handler]:
    handlers: dict[tuple[str, str], Handler] = {}
    for handler in families:
        for op in sorted(handler.ops):
            key = (handler.domain, op)
            if key in handlers:
                raise AssertionError(f"{op} has two handlers: {handlers[key].family} and "
                                     f"{handler.family}")
            handlers[key] = handler
    return handlers


HANDLERS = _registry(FAMILIES)

# the sub-rules, by the name --skip takes, in the order `unfold rules` and errors list them
RULES: dict[str, Rule] = {rule.name: rule for rule in (
    norm.RULE, backward.PRODUCER_RULE, backward.EMBEDDING_RULE, linear.CONSUMER_RULE,
    conv.RULE, linear.TOKEN_RULE, attention.RULE, layout.RULE, select.RULE, pad.RULE,
    pool.RULE, concat.RULE, constant_op.RULE, residual.RULE, gate.RULE, activation.RULE,
    negate.RULE,
)}
assert {r.name for h in FAMILIES for r in h.rules} | {norm.NAME} == set(RULES), \
    "every sub-rule a handler uses is listed once"


def rule_ops(name: str) -> list[str]:
    """The ops whose handlers use the sub-rule `name` (norm sites for `compose`)."""
    if name == norm.NAME:
        return ["(norm sites)"]
    return sorted({op for (_, op), h in HANDLERS.items()
                   if any(r.name == name for r in h.rules_of(op))})


def _checked(plan: Move | Stop, ctx: Context) -> Move | Stop:
    """What every plan passes before it counts: none of its sub-rules is skipped, and every
    affine it leaves pending holds in its tensor's type (one that would not could never be
    materialized: a composition of two huge scales)."""
    if isinstance(plan, Move):
        for rule in (plan.rule, *plan.uses):
            if rule in ctx.skip:
                return Stop(f"rule '{rule}' is skipped")
        for name, pending in plan.outputs.items():
            dtype = dtype_of(ctx.tensor(name))
            if isinstance(pending, Pending) and not pending.affine.finite_in(dtype):
                return Stop(f"the affine it would leave on '{name}' is not finite in {dtype}")
    return plan


def plan_site(site: Site, incoming: Carried | None, ctx: Context) -> Move | Stop:
    """A norm site's plan (transfer/norm.py), its sub-rule skipped here as any op's."""
    return _checked(norm.plan_site(site, incoming, ctx), ctx)


def plan_node(node: gs.Node, pendings: Mapping[int, Carried], ctx: Context) -> Move | Stop:
    """The node's handler's Move for all of the node's pendings; failing that, where several
    meet (Q and Kᵀ both shifted), its Move for one of them alone (the others are then
    materialized for it); else the Stop with its reason."""
    if node.op in SHAPE_READERS:  # they see the shape only, which no affine changes
        return Move("shape", "", tuple(pendings), {})
    found = _plan(node, pendings, ctx)
    if isinstance(found, Move) or len(pendings) < 2:
        return found
    for slot in sorted(pendings):
        alone = _plan(node, {slot: pendings[slot]}, ctx)
        if isinstance(alone, Move):
            for other in pendings:
                if other not in alone.consumes:
                    refused = _plan(node, {other: pendings[other]}, ctx)
                    if isinstance(refused, Stop):
                        alone.declined[other] = refused.reason
            return alone
    return found


def _plan(node: gs.Node, pendings: Mapping[int, Carried], ctx: Context) -> Move | Stop:
    affines = {slot: p for slot, p in pendings.items() if isinstance(p, Pending)}
    if len(affines) != len(pendings):  # attention's own kind, whatever the op
        return _checked(attention.carry_invariant(node, pendings, ctx), ctx)
    handler = ctx.handler(node)
    plan = handler.prep(node, affines, ctx) if handler is not None and \
        handler.prep is not None else None
    if plan is None:
        return Stop(f"{node.op} does not commute with a per-channel affine")
    return _checked(plan, ctx)


__all__ = ["HANDLERS", "RULES", "Handler", "Rule", "plan_node", "plan_site", "rule_ops"]
