"""Rule 5 on a pre-norm residual stream: carry a *pending shift* (a norm's shift b W that a
bias-less linear could not take, rule 1) down the stream, into the shifts of the norms that
read it, until it composes with the next norm that reads it alone (Swin's patch merging: its
reduction Linear has no bias, and a pre-norm stage follows).

Before:      t = x + c,   read by norms A_i(t) = a_i⊙t + b_i and by one residual Add t + f
After:       A_i'(x) = a_i⊙x + (a_i⊙c + b_i)      (only the norm's last Add/Sub constant changes)
             (x + f) + c                          (the pending shift, one step down the stream)
Conditions:  the site is a pure shift (a = 1) the fold made; every value reader of t is a norm
             whose chain ends with an Add or Sub (its new shift goes there), or an Add of t and
             another variable (at most one: each would need an Add of its own). With no residual
             Add among the readers the shift is gone; else it moves on, and where it meets a
             graph output it stays, materialized.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.graph import (
    Names,
    constant_value,
    place_affine_after,
    replace_weight,
    value_readers,
)
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite, site_starting_at

NAME = "pending-shift"
ALGEBRA = "A(x + c) = a⊙x + (a⊙c + b); (x + c) + f = (x + f) + c, down a pre-norm stream"
REASON = "cannot carry the shift down the stream"


def _shift_slot(node: gs.Node) -> tuple[int, float] | None:
    """(slot of the constant, sign with which a change of the output enters it) for the Add or
    Sub that ends a norm: out + δ is Add(v + δ), Sub(x, v − δ) or Sub(v + δ, x)."""
    if node.op == "Add":
        return (0 if constant_value(node.inputs[0]) is not None else 1), 1.0
    if node.op == "Sub":
        return (0, 1.0) if constant_value(node.inputs[0]) is not None else (1, -1.0)
    return None


def _plan(site: NormSite, graph: gs.Graph):
    """(reader norms, the residual Add or None), or why the shift cannot go on."""
    norms: list[NormSite] = []
    residual: gs.Node | None = None
    for reader in value_readers(site.output):
        what = f"reader {reader.op} '{reader.name}'"
        norm = site_starting_at(reader, graph)
        if norm is not None and norm.input is site.output:
            if _shift_slot(norm.nodes[-1]) is None:
                return f"{what} starts a norm that ends with {norm.nodes[-1].op}, not Add/Sub"
            norms.append(norm)
            continue
        if reader.op == "Add" and len(reader.inputs) == 2 and \
                reader.inputs[0] is not reader.inputs[1] and \
                all(constant_value(t) is None for t in reader.inputs):
            if residual is not None:
                return f"{what} is a second residual Add (each would need an Add of its own)"
            residual = reader
            continue
        return f"{what} is neither a norm nor a residual Add"
    return norms, residual


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    readers = value_readers(site.output)
    if np.any(site.affine.scale != 1.0) or len(readers) < 2 or \
            site.output.name in {t.name for t in graph.outputs}:
        return Outcome()  # one reader: rules 3-5 carry it (or rule 4 composes it)
    plan = _plan(site, graph)
    if isinstance(plan, str):
        report.reasons.append(f"{REASON}: {plan}")
        return Outcome()
    norms, residual = plan
    shift = site.affine.shift
    for norm in norms:
        last = norm.nodes[-1]
        slot, sign = _shift_slot(last)  # type: ignore[misc]  # _plan checked it
        value = constant_value(last.inputs[slot])
        assert value is not None
        delta = norm.affine.scale * shift  # what the norm's output gains from t = x + c
        channels = max(value.size, delta.size)
        new = np.broadcast_to(value.reshape(-1).astype(np.float64), channels) + sign * delta
        shape = (*value.shape[:-1], channels) if value.ndim else (channels,)
        replace_weight(last, slot, new.reshape(shape).astype(value.dtype), names)
        norm.nodes[0].inputs[norm.nodes[0].inputs.index(site.output)] = site.input
    into = ", ".join(repr(n.name) for n in norms)
    new_nodes: list[gs.Node] = []
    if residual is not None:
        residual.inputs[residual.inputs.index(site.output)] = site.input
        new_nodes = place_affine_after(residual, site.affine.scale, shift, site.dtype, graph,
                                       names, base=f"{report.name}_after_{residual.name}")
        report.path.append(f"shift carried past the residual Add '{residual.name}'"
                           + (f" and into the shifts of {into}" if norms else ""))
    else:
        report.path.append(f"shift composed into the shifts of {into}")
    site.nodes[-1].outputs.clear()
    return Outcome(gone=True, moved_to=new_nodes)
