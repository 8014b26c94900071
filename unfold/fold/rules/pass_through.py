"""Rule 3: move a norm downstream past an op that commutes with a per-channel affine on the last
axis, so a later rule can fold it (e.g. final norm -> Gather of the cls token -> head).

Before:      y = R(a⊙x + b)
After:       y = a⊙R(x) + b                   (one Mul and one Add after R)
Conditions:  R is the norm's only reader, reads it as its data input, and keeps the last axis
             as the channel axis, whole and in order: Identity, Dropout; Gather, Slice,
             ReduceMean, Squeeze over other axes; Unsqueeze that adds no axis after it;
             Transpose with perm[-1] = last; Reshape whose target's last dim is C; Flatten at
             the last axis. Per-position selection, reshuffling and averaging of whole channel
             vectors all commute with a⊙x + b (averaging because the weights sum to one).
Merging:     a Reshape or Flatten whose output's last dim is k·C (Swin's patch merging: 2x2
             neighbours' channels side by side) takes a and b tiled k times: in row-major order
             each output row starts at a multiple of C, so its element j is channel j mod C.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.graph import Names, constant_value, place_affine_after, rank, reshape_last_dim
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "pass-through"
ALGEBRA = "R(a⊙x + b) = a⊙R(x) + b for R that keeps the channel axis"


def _axes(node: gs.Node, input_index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the constant input (newer ones)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > input_index and node.inputs[input_index].name:
        value = constant_value(node.inputs[input_index])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    return []


MOVABLE_OPS = frozenset({"Identity", "Dropout", "Gather", "Slice", "ReduceMean", "Squeeze",
                         "Unsqueeze", "Transpose", "Reshape", "Flatten"})


def keeps_channel_axis(node: gs.Node, site: NormSite) -> str | None:
    """None when `node` keeps the last axis as the channel axis; else the reason it does not."""
    op = node.op
    r = rank(site.output)
    if op in ("Identity", "Dropout"):
        return None
    if r is None:
        return f"the rank of '{site.output.name}' is unknown"
    last = r - 1
    if op == "Gather":
        axis = int(node.attrs.get("axis", 0)) % r
        return "it gathers along the channel axis" if axis == last else None
    if op in ("Slice", "ReduceMean", "Squeeze"):
        axes = _axes(node, 3 if op == "Slice" else 1)
        if axes is None:
            return "its axes are not constant"
        if op == "Slice" and not axes:  # no axes: starts[i] applies to axis i
            starts = constant_value(node.inputs[1])
            if starts is None:
                return "its starts are not constant"
            axes = list(range(starts.size))
        if op == "ReduceMean" and not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return None
            return "it reduces every axis"
        if op == "Squeeze" and not axes:
            return "it squeezes unknown axes"
        return "it works on the channel axis" if last in [a % r for a in axes] else None
    if op == "Unsqueeze":
        axes = _axes(node, 1)
        if not axes:
            return "its axes are not constant"
        out_rank = r + len(axes)
        return "it adds an axis after the channels" if out_rank - 1 in [
            a % out_rank for a in axes] else None
    if op == "Transpose":
        perm = list(node.attrs.get("perm", reversed(range(r))))
        return "it moves the channel axis" if perm[-1] != last else None
    if op == "Reshape":
        last_dim = reshape_last_dim(node)
        if last_dim is None:
            return "its target's last dimension is not known"
        return f"its output's last dimension is {last_dim}, not the {site.channels} channels" \
            if last_dim != site.channels else None
    if op == "Flatten":
        axis = int(node.attrs.get("axis", 1)) % r if r else 0
        return None if axis == last else "it merges the channel axis with others"
    raise AssertionError(f"{op} is in MOVABLE_OPS without a condition")


def merged_copies(node: gs.Node, site: NormSite) -> int | None:
    """k when the Reshape or Flatten `node` puts k whole channel vectors side by side on its
    output's last axis (k > 1, known), else None."""
    if node.op not in ("Reshape", "Flatten") or site.channels == 1:
        return None
    last = reshape_last_dim(node) if node.op == "Reshape" else None
    if node.op == "Flatten":
        in_shape, r = getattr(node.inputs[0], "shape", None), rank(site.output)
        axis = int(node.attrs.get("axis", 1))
        if in_shape is None or r is None or not -r <= axis < r:
            return None
        tail = in_shape[axis % r:]
        last = int(np.prod(tail)) if all(isinstance(d, int) for d in tail) else None
    if not isinstance(last, int) or last <= site.channels or last % site.channels:
        return None
    return last // site.channels


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    """Move `site` past its only reader (the Outcome names the nodes that now carry it)."""
    readers = list(site.output.outputs)
    if len(readers) != 1 or site.output.name in {t.name for t in graph.outputs}:
        return Outcome()
    (node,) = readers
    if node.op not in MOVABLE_OPS:  # the other rules say why they could not take it
        return Outcome()
    if node.inputs[0] is not site.output or any(t is site.output for t in node.inputs[1:]):
        return Outcome()
    reason = keeps_channel_axis(node, site)
    copies = merged_copies(node, site) if reason is not None else 1
    if copies is None:
        report.reasons.append(f"cannot move past {node.op} '{node.name}': {reason}")
        return Outcome()
    if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
        report.reasons.append(f"cannot move past Dropout '{node.name}': its mask is read")
        return Outcome()

    node.inputs[0] = site.input
    site.nodes[-1].outputs.clear()
    new_nodes = place_affine_after(node, np.tile(site.affine.scale, copies),
                                   np.tile(site.affine.shift, copies), site.dtype, graph, names,
                                   base=f"{report.name}_after_{node.name}")
    report.path.append(f"moved past {node.op} '{node.name}'" +
                       (f" ({copies} channel vectors side by side)" if copies > 1 else ""))
    return Outcome(gone=True, moved_to=new_nodes)
