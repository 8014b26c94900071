"""Add/Sub of two variables: the residual stream (rule 5), and affines that meet.

    a⊙p + b + w   = a⊙(p + w⊘a) + b        the branch w divided by a, in the linear making it
                                            (backward); a pure shift needs no division at all
    a1⊙p + b1 + a2⊙p + b2 = (a1 + a2)⊙p + (b1 + b2)     one carrier: the Add goes (RepBN:
                                            BN(x) + α·x, with α·x a constant Mul of the carrier)
    s⊙p + b1 + s⊙q + b2   = s⊙(p + q) + (b1 + b2)        two carriers, one scale

Bound (`--max-scale M`): where dividing the branch would grow its weights by more than M
(post-norm streams carry the product of every norm's scale), one Mul first re-scales the
stream (the pending becomes a pure shift), so an fp16 engine stays in range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from unfold.errors import option
from unfold.fold import backward
from unfold.fold.algebra import Affine
from unfold.fold.flow import (
    Before,
    Context,
    Move,
    Pending,
    Rule,
    Stop,
    merged,
    named,
)
from unfold.fold.graph import constant_operand
from unfold.numerics import MIN_ABS_SCALE

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

NAME = "residual-add"
RULE = Rule(NAME, "transfer", "a⊙p + b + w = a⊙(p + w⊘a) + b, dividing w's producer by a",
            frozenset({"Add", "Sub"}))



def _same_carrier_term(other: gs.Tensor, pending: Pending, ctx: Context) -> np.ndarray | None:
    """k when `other` is k⊙(the pending's carrier): the carrier itself (k = 1) or a constant
    Mul of it (RepBN's α·x)."""
    source = pending.source
    if source is None:
        return None
    if other is source:
        return np.ones((1,) * pending.affine.rank)
    producer = ctx.producer(other)
    if producer is None or producer.op != "Mul":
        return None
    operand = constant_operand(producer)
    if operand is None or producer.inputs[1 - operand[0]] is not source:
        return None
    rank = pending.affine.rank
    k = np.asarray(operand[1], dtype=np.float64)
    return k.reshape((1,) * (rank - k.ndim) + k.shape) if k.ndim <= rank else None


def _rescale_carrier(node: gs.Node, slot: int, pending: Pending, affine: Affine,
                     ctx: Context) -> backward.Request | backward.Refusal:
    """Plan scaling the carrier of the pending on `slot` (in whatever produces it), which is
    right only if this node is the pending's one reader."""
    original = node.inputs[slot]
    if not ctx.read_only_by(original, [node]):
        return backward.Refusal(f"'{original.name}' is read by other ops too")
    tensor = pending.carrier if pending.carrier is not None else original
    return backward.request(tensor, affine, [node], ctx, want_shift=False)


def _bound_exceeded(affine: Affine, ctx: Context) -> bool:
    if ctx.max_scale is None:
        return False
    low, high = affine.channel_range()
    return high > ctx.max_scale or (low > 0 and 1.0 / low > ctx.max_scale)


def prep(node: gs.Node, pendings: dict[int, Pending], ctx: Context) -> Move | Stop | None:
    """This sub-rule's part of arithmetic's handler: an Add or Sub of two variables."""
    sign = -1.0 if node.op == "Sub" else 1.0
    out = node.outputs[0].name
    if len(pendings) == 2:
        first, second = pendings[0], pendings[1]
        a, b = first.affine, second.affine
        if node.inputs[0] is node.inputs[1] or \
                (first.source is not None and first.source is second.source):
            total = Affine(a.scale + sign * b.scale, a.shift + sign * b.shift)
            return Move(NAME, f"two affines of one tensor added at {named(node)}",
                        (0, 1), {out: merged([first, second], total, source=first.source)},
                        deletes=(node,), carrier_slot=0)
        if a.scale.shape == b.scale.shape and np.array_equal(a.scale, b.scale):
            return Move(NAME, f"carried past {named(node)} (both sides had it)",
                        (0, 1), {out: merged([first, second],
                                             Affine(a.scale, a.shift + sign * b.shift))})
        # different scales: one side's carrier re-scaled to the other's, in its producer
        for kept_slot, other_slot in ((0, 1), (1, 0)):
            kept_affine, moving_affine = pendings[kept_slot].affine, pendings[other_slot].affine
            if np.any(np.abs(kept_affine.scale) < MIN_ABS_SCALE):
                continue
            to_kept = Affine(moving_affine.scale / kept_affine.scale, np.zeros(1))
            found = _rescale_carrier(node, other_slot, pendings[other_slot], to_kept, ctx)
            if isinstance(found, backward.Request):
                shift = a.shift + sign * b.shift
                return Move(NAME, f"carried past {named(node)} (the other side's scale "
                                  f"rescaled in {', '.join(found.absorbed_by)})", (0, 1),
                            {out: merged([first, second], Affine(kept_affine.scale, shift))},
                            writes=tuple(found.writes))
        # neither producer can: one Mul re-scales one side to the other's scale, here
        #   a⊙p + b1 + c⊙q + b2 = a⊙(p + (c⊘a)⊙q) + (b1 + b2)
        keep = 0 if not np.any(np.abs(a.scale) < MIN_ABS_SCALE) else 1
        kept = pendings[keep].affine
        if np.any(np.abs(kept.scale) < MIN_ABS_SCALE):
            return Stop("two pending affines with different scales meet here, one ~0")
        moving = 1 - keep
        ratio = pendings[moving].affine.scale / kept.scale
        note = (f"a Mul stays before {named(node)}: two pending affines with different scales "
                f"meet there and neither side's producer can take the other's")
        return Move(NAME, f"carried past {named(node)} (one side re-scaled to the other)",
                    (0, 1), {out: merged([first, second],
                                         Affine(kept.scale, a.shift + sign * b.shift))},
                    cost=1.0, leaves=note, writes=(
                        Before(node, moving, Affine(ratio, np.zeros(1)), f"{node.name}_scale"),))
    (slot,) = pendings
    pending = pendings[slot]
    affine = pending.affine
    other = node.inputs[1 - slot]
    # the pending's sign in the result: Sub(w, p) = w − p
    own = -1.0 if (node.op == "Sub" and slot == 1) else 1.0
    k = _same_carrier_term(other, pending, ctx)
    if k is not None:  # a⊙x + b ± k⊙x
        other_sign = sign if slot == 0 else 1.0
        total = Affine(own * affine.scale + other_sign * k, own * affine.shift)
        return Move(NAME, f"merged with {named(node)} (the other side is the same "
                          f"tensor, times a constant)", (slot,),
                    {out: pending.then(total, keep_source=True)}, deletes=(node,),
                    carrier_slot=slot)
    if not affine.has_scale:  # a pure shift: into the other operand's producer, or along
        # p + b + w = p + (w + b);  p + b − w = p − (w − b);  w − p − b = (w − b) − p
        taker = backward.request(other, Affine(affine.scale, sign * affine.shift), [node], ctx,
                                 want_shift=True) if affine.has_shift else None
        if isinstance(taker, backward.Request) and taker.takes_shift:
            return Move(NAME, f"shift moved into the other operand of {named(node)} "
                              f"({taker.event})", (slot,), {}, writes=tuple(taker.writes))
        return Move(NAME, f"shift carried past the residual {named(node)}", (slot,),
                    {out: pending.then(Affine(affine.scale, own * affine.shift))})
    if _bound_exceeded(affine, ctx):
        low, high = affine.channel_range()

        note = (f"the stream re-scaled by one Mul before {named(node)} (its carried scale "
                f"spans {low:.3g}..{high:.3g}, beyond "
                f"{option('max_scale', ctx.max_scale)})")
        return Move(NAME, note, (slot,), {out: pending.then(
            Affine(np.ones_like(affine.scale), own * affine.shift),
            stayed=pending.stayed + (note,))}, cost=1.0, writes=(
                Before(node, slot, Affine(affine.scale, np.zeros(1)), f"{node.name}_rescale"),))
    tiny = np.abs(affine.scale) < MIN_ABS_SCALE
    if np.any(tiny):
        return Stop(f"the pending scale is ~0 on {int(tiny.sum())} channel(s) (|a| < "
                    f"{MIN_ABS_SCALE}): dividing the other operand by it is not finite")
    # a⊙p + b ± w = a⊙(p ± (w ± b)⊘a): the other operand divided by a, and given the shift
    # where its producer has a bias to take it
    inverse = 1.0 / affine.scale
    with_shift = backward.request(other, Affine(inverse, sign * affine.shift * inverse),
                                  [node], ctx, want_shift=True) if affine.has_shift else None
    if isinstance(with_shift, backward.Request) and with_shift.takes_shift:
        found, left = with_shift, np.zeros(1)
    else:
        found = backward.request(other, Affine(inverse, np.zeros(1)), [node], ctx,
                                 want_shift=False)
        left = own * affine.shift
    if isinstance(found, backward.Refusal):
        if not affine.has_shift:
            return Stop(f"cannot divide the other operand by the scale: {found}")
        # the scale materialized here (one Mul), the shift carried on past the Add
        note = (f"the scale stays as one Mul before {named(node)} (cannot divide the other "
                f"operand by it: {found})")
        return Move(NAME, f"shift carried past the residual {named(node)}", (slot,),
                    {out: pending.then(Affine(np.ones_like(affine.scale),
                                              own * affine.shift))},
                    cost=1.0, leaves=note, writes=(
                        Before(node, slot, Affine(affine.scale, np.zeros(1)),
                               f"{node.name}_scale"),))
    dividers = ", ".join(f"'{n}'" for n in found.absorbed_by) or "its constants"
    return Move(NAME, f"carried past the residual {named(node)} (divided {dividers})", (slot,),
                {out: pending.then(Affine(affine.scale, left))}, writes=tuple(found.writes))
