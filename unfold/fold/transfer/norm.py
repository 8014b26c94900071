"""A norm site (a chain of per-channel constant ops, or a BatchNormalization) as the dataflow
pass meets it.

Without a pending affine on its input it starts one: first it tries to go back into what
produces its input (backward.py: a producer linear, rule 2, or the embedding tables, rule 6;
a producer without a bias takes the scale and the shift goes on as a pending shift), else its
affine becomes the pending on its output and moves forward. After a pending affine (post-norm
streams: the previous norm, carried past the residual Add) it composes (rule 4) and goes:

    A2(A1(x)) = (s2⊙s1)⊙x + (s2⊙b1 + b2)

A pending that is a pure shift (a bias-less linear's b @ W) may still let the norm's scale go
back into that linear.
"""

from __future__ import annotations

from unfold.fold import backward
from unfold.fold.algebra import Affine
from unfold.fold.flow import Carried, Context, Move, Pending, Rule, Stop
from unfold.fold.sites import Site

NAME = "compose"
START = "start"
ALGEBRA = "A2(A1(x)) = (s2⊙s1)⊙x + (s2⊙b1 + b2): a norm after a pending affine goes into it"
RULE = Rule(NAME, "transfer", ALGEBRA)  # not an op's: the driver hands it the norm sites


def plan_site(site: Site, incoming: Carried | None, ctx: Context) -> Move | Stop:
    _first, slot, source = site.nodes[0], site.slot, site.current_input()
    if incoming is not None and incoming.carrier is not None:
        source = incoming.carrier  # (the rewrite pass: what the site will read)
    if incoming is not None:
        if not isinstance(incoming, Pending):
            return Stop("a norm cannot follow an unknown per-query constant")
        scaled = incoming.affine.has_scale
        composed = incoming.affine.then(site.affine)
        origins = tuple(dict.fromkeys(incoming.origins + (site.name,)))
        stayed = incoming.stayed
    else:
        composed, origins, stayed, scaled = site.affine, (site.name,), (), False
    where = {"carrier_slot": slot} if incoming is not None else {"carrier_tensor": source}
    consumes = (slot,) if incoming is not None else ()
    refused = None
    readers = site.input_readers()
    alone = incoming is None or ctx.read_only_by(site.current_input(), readers)
    if alone and not scaled:
        # (with an incoming pending, scaling its carrier is right only if nothing else reads it)
        found = backward.request(source, composed, readers, ctx, want_shift=True)
        if isinstance(found, backward.Request):
            left = Affine.identity(composed.rank) if found.takes_shift or \
                not composed.has_shift else Affine.shift_only(composed.shift)
            return Move(found.rule, found.event, consumes,
                        {site.output.name: Pending(affine=left, origins=origins, stayed=stayed)},
                        own_outputs=incoming is not None,
                        uses=(NAME,) if incoming is not None else (),
                        deletes=tuple(site.nodes), writes=tuple(found.writes),
                        absorbed_by=tuple(found.absorbed_by), **where)
        if found.deep:
            into = "the embedding tables" if "table" in found else "the producer"
            refused = f"cannot fold into {into}: {found}"
    if incoming is not None:
        # what the norm's output then costs, it costs composed or not: not charged to the edge
        return Move(NAME, f"composed with '{site.name}' ({site.kind})", consumes,
                    {site.output.name: Pending(affine=composed, origins=origins,
                                               source=incoming.source, stayed=stayed)},
                    own_outputs=True,
                    deletes=tuple(site.nodes), refused=refused, **where)
    return Move(START, "", consumes, {site.output.name: Pending(affine=composed, origins=origins,
                                                                source=source)},
                deletes=tuple(site.nodes), refused=refused, **where)
