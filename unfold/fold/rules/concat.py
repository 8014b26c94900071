"""Rule 3 at a Concat: move a norm past a Concat along a non-channel axis, so a later rule can
fold it. Covers torch.roll (Swin's shifted windows: Slice, Slice, Concat per rolled axis) and
the cls token concatenated with normed patch tokens.

Before:      y = Concat(R1(a⊙x + b), R2(a⊙x + b), t)     R: Slice/Gather/... keeping channels
After:       y = a⊙Concat(R1(x), R2(x), (t - b)⊘a) + b   (one Mul and one Add after the Concat)
             because each part is a⊙(·) + b on the same channels, and a constant part t equals
             a⊙((t - b)⊘a) + b.
Conditions:  every reader of the norm is the Concat itself or a single-reader op that rule 3
             moves past (keeps the last axis as the channel axis) feeding only the Concat; the
             Concat joins along another axis; each of its other inputs is a constant (possibly
             through an Expand) whose last axis has the C channels; a constant part needs every
             |a| > 1e-12 (its inverse must be finite).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.graph import Names, constant_value, place_affine_after, rank, replace_weight
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.rules.pass_through import MOVABLE_OPS, keeps_channel_axis
from unfold.fold.sites import NormSite

NAME = "concat"
ALGEBRA = "Concat(a⊙x + b, t) = a⊙Concat(x, (t − b)⊘a) + b along a non-channel axis"

MIN_ABS_SCALE = 1e-12


def _join(site: NormSite, graph_outputs: set[str]) -> tuple[gs.Node, list[gs.Node]] | None:
    """(the Concat every reader leads to, the readers that lie between), or None."""
    concat: gs.Node | None = None
    between: list[gs.Node] = []
    for reader in site.output.outputs:
        if reader.op == "Concat":
            node = reader
        elif reader.op in MOVABLE_OPS and reader.inputs[0] is site.output and \
                not any(t is site.output for t in reader.inputs[1:]) and \
                len(reader.outputs) == 1 and reader.outputs[0].name not in graph_outputs and \
                len(reader.outputs[0].outputs) == 1 and \
                keeps_channel_axis(reader, site) is None:
            node = reader.outputs[0].outputs[0]
            between.append(reader)
        else:
            return None
        if node.op != "Concat" or (concat is not None and node is not concat):
            return None
        concat = node
    return (concat, between) if concat is not None else None


def _constant_part(tensor: gs.Tensor, channels: int) -> tuple[gs.Node | None, np.ndarray] | None:
    """A Concat input that is a constant, or an Expand of one: (the Expand or None, value)."""
    value = constant_value(tensor)
    if value is not None:
        return (None, value) if value.ndim and value.shape[-1] == channels else None
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Expand" and len(tensor.outputs) == 1:
        expand = tensor.inputs[0]
        value = constant_value(expand.inputs[0])
        if value is not None and value.ndim and value.shape[-1] == channels:
            return expand, value
    return None


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    graph_outputs = {t.name for t in graph.outputs}
    if site.output.name in graph_outputs:
        return Outcome()
    found = _join(site, graph_outputs)
    if found is None:
        return Outcome()
    concat, between = found
    out_rank = rank(concat.outputs[0])
    axis = int(concat.attrs.get("axis", 0))
    if out_rank is None or axis % out_rank == out_rank - 1:
        report.reasons.append(f"cannot move past Concat '{concat.name}': it joins along the "
                              f"channel axis")
        return Outcome()
    ours = {id(t) for t in [site.output] + [n.outputs[0] for n in between]}
    constants: list[tuple[int, gs.Node | None, np.ndarray]] = []
    for slot, tensor in enumerate(concat.inputs):
        if id(tensor) in ours:
            continue
        part = _constant_part(tensor, site.channels)
        if part is None:
            report.reasons.append(f"cannot move past Concat '{concat.name}': its input "
                                  f"'{tensor.name}' is neither this norm nor a constant")
            return Outcome()
        constants.append((slot, *part))
    scale, shift = site.affine.scale, site.affine.shift
    if constants and np.any(np.abs(scale) < MIN_ABS_SCALE):
        report.reasons.append(f"cannot move past Concat '{concat.name}': the scale is ~0, so "
                              f"its constant input has no exact preimage")
        return Outcome()
    inverted = []
    for slot, expand, value in constants:
        preimage = ((value.astype(np.float64) - shift) / scale).astype(value.dtype)
        if not np.all(np.isfinite(preimage)):
            report.reasons.append(f"cannot move past Concat '{concat.name}': the preimage of "
                                  f"its constant input is not finite in {value.dtype}")
            return Outcome()
        inverted.append((slot, expand, preimage))
    for slot, expand, preimage in inverted:
        if expand is None:
            replace_weight(concat, slot, preimage, names)
        else:
            replace_weight(expand, 0, preimage, names)
    for slot, tensor in enumerate(concat.inputs):
        if tensor is site.output:
            concat.inputs[slot] = site.input
    for node in between:
        node.inputs[0] = site.input
    site.nodes[-1].outputs.clear()
    new_nodes = place_affine_after(concat, scale, shift, site.dtype, graph, names,
                                   base=f"{report.name}_after_{concat.name}")
    ops = "/".join([n.op for n in between] + ["Concat"])
    report.path.append(f"moved past {ops} '{concat.name}'"
                       + (" (its constant input mapped back through the norm)"
                          if constants else ""))
    return Outcome(gone=True, moved_to=new_nodes)
