"""Rule 6: fold a norm right after the embeddings into the embedding tables (a pre-norm model
with an embedding norm, whose output feeds both the first block's norm and the residual stream,
so no reader can take it).

Before:      y = a⊙(T1[ids] + T2[pos] + ... + P) + b     T: tables (V, C), P: a constant
After:       y = T1'[ids] + T2'[pos] + ... + P'          T1' = a⊙T1 + b, the others a⊙T
             because a per-channel affine of a sum is the sum of the scaled parts plus b once,
             and a row gathered from a⊙T + b is a⊙(the row) + b.
Conditions:  the norm's input is a Gather of a constant table along axis 0, or an Add tree whose
             leaves are such Gathers, constants or Slices of constants over other axes (a
             position table cut to the sequence length), each read only on this path; a table
             shared with another op (tied to an output projection) is left alone; the channels
             are the last axis of every part (C columns); the new tables are finite.
Tried last: a post-norm model carries its embedding norm down the residual stream instead.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from unfold.fold.graph import Names, constant_value, rank, replace_weight, value_readers
from unfold.fold.report import SiteReport
from unfold.fold.rules._outcome import Outcome
from unfold.fold.sites import NormSite

NAME = "embedding"
ALGEBRA = "a⊙(T[ids] + P) + b = (a⊙T + b)[ids] + a⊙P"


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _only_for(tensor: gs.Tensor, reader: gs.Node, graph_outputs: set[str]) -> bool:
    readers = value_readers(tensor)
    return tensor.name not in graph_outputs and len(readers) == 1 and readers[0] is reader


def _leaves(tensor: gs.Tensor, reader: gs.Node, channels: int, graph_outputs: set[str],
            depth: int = 0) -> list[tuple[gs.Node, int, np.ndarray, bool]] | None:
    """The parts summed into `tensor` (read by `reader`): (node, input slot, constant, is a
    table) each, the constant to rewrite being node.inputs[slot]. None when it is not such a
    sum."""
    value = constant_value(tensor)
    if value is not None:
        ok = value.ndim >= 1 and value.shape[-1] == channels
        return [(reader, reader.inputs.index(tensor), value, False)] if ok else None
    if depth > 8 or len(tensor.inputs) != 1 or not _only_for(tensor, reader, graph_outputs):
        return None
    node = tensor.inputs[0]
    if node.op == "Gather":
        table = constant_value(node.inputs[0])
        if table is None or table.ndim != 2 or table.shape[1] != channels or \
                int(node.attrs.get("axis", 0)) != 0:
            return None
        if len(node.inputs[0].outputs) != 1:
            raise _Refused(f"the table of '{node.name}' is shared with another op (tied): "
                           f"folding would copy it")
        return [(node, 0, table, True)]
    if node.op == "Slice":
        data = constant_value(node.inputs[0])
        axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 else None
        r = rank(node.inputs[0])
        if data is None or r is None or data.shape[-1] != channels or axes is None or \
                (r - 1) in [int(a) % r for a in axes.reshape(-1)]:
            return None
        return [(node, 0, data, False)]
    if node.op == "Add" and len(node.inputs) == 2 and node.inputs[0] is not node.inputs[1]:
        parts = []
        for operand in node.inputs:
            found = _leaves(operand, node, channels, graph_outputs, depth + 1)
            if found is None:
                return None
            parts += found
        return parts
    return None


def apply(site: NormSite, graph: gs.Graph, names: Names, report: SiteReport) -> Outcome:
    graph_outputs = {t.name for t in graph.outputs}
    try:
        parts = _leaves(site.input, site.nodes[0], site.channels, graph_outputs)
    except _Refused as refused:
        report.reasons.append(f"cannot fold into the embedding tables: {refused.reason}")
        return Outcome()
    if not parts or not any(is_table for *_, is_table in parts):
        return Outcome()  # not an embedding sum: nothing to say
    scale, shift = site.affine.scale, site.affine.shift
    shifted = next(i for i, (*_, is_table) in enumerate(parts) if is_table)
    new_values = []
    for i, (_, _, value, _) in enumerate(parts):
        scaled = value.astype(np.float64) * scale + (shift if i == shifted else 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = scaled.astype(value.dtype)
        if not np.all(np.isfinite(cast)):
            report.reasons.append("cannot fold into the embedding tables: they would not be "
                                  f"finite in {value.dtype}")
            return Outcome()
        new_values.append(cast)
    tables = []
    for (node, slot, _, is_table), value in zip(parts, new_values, strict=True):
        replace_weight(node, slot, value, names)
        if is_table:
            tables.append(node.name)
    site.remove_into_input_maker()
    report.absorbed_by += tables
    report.path.append("folded into the embedding tables " +
                       ", ".join(f"'{t}'" for t in tables))
    return Outcome(gone=True)
