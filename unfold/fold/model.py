"""fold_model: find every offline norm site of an ONNX model and fold it away where the rules
allow, reporting each site. Constants already computed by constant subgraphs (the authors'
Div-by-Sqrt eval form) are folded first, so the sites see plain constants."""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Collection

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from unfold.errors import UnfoldError
from unfold.fold.batch_norm import KIND as BATCH_NORM
from unfold.fold.batch_norm import rewrite_batch_norms
from unfold.fold.dataflow import fold_graph
from unfold.fold.graph import RESHAPES, SHAPE_READERS, Names, emit_affine, is_round_trip, rank
from unfold.fold.online import find_online_norms
from unfold.fold.report import FoldReport, SiteReport
from unfold.fold.rules import RULES, Outcome
from unfold.fold.rules.pending_shift import REASON as PENDING_SHIFT_REASON
from unfold.fold.sites import LINEAR_PRODUCERS, NormSite, find_sites
from unfold.fold.transfer import RULES as TRANSFER_RULES
from unfold.fold.weights import (
    ModelParts,
    import_parts,
    infer_shapes,
    parts_of,
    weight_nbytes,
    weightless_model,
)

# A full garbage collection costs about 0.4 s in a process that has imported torch: worth it
# only where the weights are big enough for their copies to matter.
COLLECT_FROM_BYTES = 64 << 20

# One move per round; a site moves past each op at most once, so no graph needs more rounds
# than a few per node (a guard against a rule that would undo another's move).
MAX_MOVES_PER_NODE = 4


def _drop_layout_round_trips(graph: gs.Graph) -> None:
    """x.transpose(1, 2) -> BN -> transpose back, or x.reshape(B*N, C) -> BN -> reshape back:
    once the norm between them is folded away the pair is a round trip; the exporters drop
    the same pair from the no-norm twin, and so does this (for the twin too). Where the first
    op has other readers it stays for them; the second goes."""
    graph_outputs = {t.name for t in graph.outputs}
    for second in [n for n in graph.nodes if n.op in RESHAPES + ("Transpose",)]:
        middle = second.inputs[0]
        if len(middle.inputs) != 1 or middle.name in graph_outputs or \
                second.outputs[0].name in graph_outputs:
            continue
        first = middle.inputs[0]
        if not is_round_trip(first, second):
            continue
        source, out = first.inputs[0], second.outputs[0]
        for reader in list(out.outputs):
            for slot, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[slot] = source
        second.outputs.clear()
        second.inputs.clear()


COMPACT_FORMS = (("Mul", "Add"), ("Mul",), ("Add",))


def _compact(site: NormSite, graph: gs.Graph, names: Names) -> bool:
    """Rewrite a site that stays as its composition (rule 4): one Mul and one Add, in place of
    a chain of several (pending affines carried along a post-norm residual stream end up
    chained at the last norm) or of a Sub/Div form. False when it is compact already."""
    if tuple(n.op for n in site.nodes) in COMPACT_FORMS:
        return False
    site.nodes[-1].outputs.clear()
    affine = site.affine
    emit_affine(site.input, site.output, affine.scale, affine.shift, site.dtype, graph, names,
                base=site.name)
    return True


def _settled_status(site: NormSite, graph: gs.Graph, report: SiteReport) -> str:
    """How a site that no rule moves any more ends."""
    if site.output.name in {t.name for t in graph.outputs}:
        return "materialized"  # once; any other reader of the output reads that same value
    producer = site.input.inputs[0] if len(site.input.inputs) == 1 else None
    if len(site.nodes) == 1 and site.nodes[0].op == "Add" and producer is not None and \
            producer.op in LINEAR_PRODUCERS and np.all(site.affine.scale == 1.0):
        # what other rules said of a norm that is gone no longer matters; why its shift
        # did not go on does
        report.reasons[:] = [r for r in report.reasons if r.startswith(PENDING_SHIFT_REASON)]
        report.path.append(f"its shift stays as the bias of {producer.op} '{producer.name}'")
        return "folded"  # a pending shift after a bias-less linear: that linear's bias now
    return "partial" if report.absorbed_by else "stayed"


def _end(report: SiteReport, ended: dict[str, list[str]], status: str) -> None:
    """A piece of a site ended (a norm folded into a bias-less q, k and v leaves three pending
    shifts): the site's status sums up all its pieces."""
    statuses = ended.setdefault(report.name, [])
    statuses.append(status)
    if set(statuses) <= {"folded"}:
        report.status = "folded"
    elif set(statuses) <= {"folded", "materialized"}:
        report.status = "materialized"
    elif set(statuses) == {"stayed"}:
        report.status = "stayed"
    else:
        report.status = "partial"


# Rounds of shape inference and constant folding before the fold: the TorchScript exporter
# computes pads and crops from Shape ops at run time (Swin's window padding); each round makes
# the next level of that arithmetic constant.
MAX_PREPARATION_ROUNDS = 6


def _fold_shape_arithmetic(graph: gs.Graph, skeleton: onnx.ModelProto) -> None:
    """Infer shapes and fold constants until the graph stops shrinking. (onnx-graphsurgeon
    evaluates constant subgraphs in ONNX Runtime, whose optimizer warns about nodes it
    leaves alone: not this tool's user's business.)"""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    infer_shapes(graph, skeleton)
    for _ in range(MAX_PREPARATION_ROUNDS):
        before = len(graph.nodes)
        graph.fold_constants().cleanup()
        infer_shapes(graph, skeleton)  # shapes the constant folding made static
        if len(graph.nodes) == before:
            break


def fold_model(model: onnx.ModelProto, *, skip: Collection[str] = (),
               in_place: bool = False, max_scale: float | None = None
               ) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every offline norm the rules can; the report says where each went or why it
    stayed. The result passes onnx.checker's full check.

    `in_place=True` folds `model` itself and returns it: no copy of its weights; the caller
    must not need the original. (`fold_parts` on a file's parts needs less memory still.)"""
    folded, report = fold_parts(ModelParts.viewing(model), skip=skip, max_scale=max_scale)
    if in_place:
        folded.into(model)
        return model, report
    return folded.to_model(), report


# The fold engine: "dataflow" (one analysis, one rewrite: unfold/fold/dataflow.py) or "rules"
# (the earlier rule-by-rule rewriter), side by side while the first replaces the second.
ENGINE = os.environ.get("UNFOLD_FOLD_ENGINE", "dataflow")


def fold_parts(parts: ModelParts, *, skip: Collection[str] = (),
               max_scale: float | None = None) -> tuple[ModelParts, FoldReport]:
    """fold_model on a model whose weights are apart (`onnx_files.load_onnx_parts`): each
    weight a fold replaces is freed as it goes, so the peak stays near the weights' size.
    Takes the weights out of `parts`; the result holds the kept ones and the new ones."""
    registry = TRANSFER_RULES if ENGINE == "dataflow" else RULES
    unknown = set(skip) - set(registry)
    if unknown:
        raise UnfoldError(f"unknown rule(s) {sorted(unknown)}; valid: {', '.join(registry)}")
    if max_scale is not None and not max_scale > 1.0:
        raise UnfoldError(f"max_scale must be above 1, got {max_scale}")
    original_ops = Counter(node.op_type for node in parts.skeleton.graph.node)
    big = sum(weight_nbytes(w) for w in parts.weights.values()) >= COLLECT_FROM_BYTES
    graph = import_parts(parts)
    _fold_shape_arithmetic(graph, parts.skeleton)
    # Both made copies of the graph, now garbage in reference cycles that share every
    # weight: until they go, no weight the rules replace could be freed.
    if big:
        gc.collect()
    names = Names(graph)
    if ENGINE == "dataflow":
        site_reports = fold_graph(graph, names, skip=skip, max_scale=max_scale).reports
        graph.cleanup().toposort()
        online = find_online_norms(graph)
        return _finish(graph, parts, big, site_reports, original_ops, online)
    reports: dict[str, SiteReport] = {}
    batch_norms = rewrite_batch_norms(graph, names)
    for name, channels in batch_norms.sites:
        reports[name] = SiteReport(name=name, kind=BATCH_NORM, channels=channels)
    for name, channels, path in batch_norms.folded:
        reports[name] = SiteReport(name=name, kind=BATCH_NORM, channels=channels,
                                   status="folded", path=[path])
    for name, channels, reason in batch_norms.stayed:
        reports[name] = SiteReport(name=name, kind=BATCH_NORM, channels=channels,
                                   reasons=[reason])
    graph.cleanup().toposort()
    online = find_online_norms(graph)
    rules = [rule for name, rule in RULES.items() if name not in skip]
    # node name -> the site it carries (moved nodes keep the name of where they came from)
    # (unnamed nodes stay out: they would all share one entry)
    origin: dict[str, str] = {n.name: site.name for site in find_sites(graph)
                              for n in site.nodes if n.name}
    settled: set[tuple[str, ...]] = set()  # chains no rule changes any more
    ended: dict[str, list[str]] = {}  # site -> how each of its pieces ended
    for _ in range(MAX_MOVES_PER_NODE * len(graph.nodes) + 16):
        moved = False
        for site in find_sites(graph, carried=origin.keys()):
            chain = tuple(n.name for n in site.nodes)
            if chain in settled:
                continue
            keys = list(dict.fromkeys(origin.get(n, site.name) for n in chain))
            key = keys[0]
            report = reports.setdefault(
                key, SiteReport(name=key, kind=site.kind, channels=site.channels))
            for other in keys[1:]:  # rule 4: sites composed into this one
                merged = reports.setdefault(
                    other, SiteReport(name=other, kind=site.kind, channels=site.channels))
                merged.merged_into = key
            report.reasons.clear()  # only the reasons of where it ends up count
            for reader in [n for n in site.output.outputs if n.op in SHAPE_READERS]:
                reader.inputs[0] = site.input  # the same shape, and no longer in the way
            outcome = Outcome()
            for rule in rules:
                outcome = rule.apply(site, graph, names, report)
                if outcome.gone or outcome.moved_to:
                    break
            if outcome.moved_to:
                origin.update((n.name, key) for n in outcome.moved_to)
                moved = True
                # look again from the top: the moved affine may now compose with the next
                # norm (rule 4), which must not fold into its readers on its own first (each
                # pending affine would be folded into every linear downstream: O(depth²))
                break
            if outcome.gone:
                report.reasons.clear()  # what a rule tried before another took it
                if outcome.left:
                    report.reasons.append(outcome.left)
                _end(report, ended, "partial" if outcome.left else "folded")
            else:
                settled.add(chain)
                _end(report, ended, _settled_status(site, graph, report))
        graph.cleanup().toposort()
        if not moved:
            break
    for site in find_sites(graph, carried=origin.keys()):
        # what stayed: one Mul and one Add each, no more
        if _compact(site, graph, names):
            key = origin.get(site.nodes[0].name, site.name)
            if key in reports:
                reports[key].path.append("composed into one Mul and one Add")
    graph.cleanup().toposort()
    for report in reports.values():
        host = report
        while host.merged_into is not None:
            host = reports[host.merged_into]
        if host is not report:
            report.status = host.status
            report.path.append(f"composed into '{host.name}'")
    return _finish(graph, parts, big, list(reports.values()), original_ops, online)


# ops that compute nothing but a layout of their inputs: two with the same inputs and
# attributes compute the same tensor
DEDUPLICABLE = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape"})


def _compose_transposes(graph: gs.Graph) -> None:
    """Transpose(Transpose(x)) with nothing else reading the middle is one Transpose (a norm
    between x.transpose(1, 2) and an attention's own transpose, once folded away, leaves two:
    the exporter had merged the second with the norm's transpose back)."""
    graph_outputs = {t.name for t in graph.outputs}
    for second in [n for n in graph.nodes if n.op == "Transpose"]:
        if not second.outputs:
            continue  # gone with a round trip before
        middle = second.inputs[0] if second.inputs else None
        first = middle.inputs[0] if middle is not None and len(middle.inputs) == 1 else None
        if first is None or first.op != "Transpose" or middle.name in graph_outputs or \
                len(middle.outputs) != 1 or rank(middle) is None:
            continue
        r = rank(middle)
        p1 = list(first.attrs.get("perm", reversed(range(r))))
        p2 = list(second.attrs.get("perm", reversed(range(r))))
        perm = [p1[i] for i in p2]
        source = first.inputs[0]
        if perm == list(range(r)) and second.outputs[0].name not in graph_outputs:
            out = second.outputs[0]  # a round trip: nothing left of either
            for reader in list(out.outputs):
                for slot, tensor in enumerate(reader.inputs):
                    if tensor is out:
                        reader.inputs[slot] = source
            second.outputs.clear()
            second.inputs.clear()
            continue
        second.attrs["perm"] = perm
        second.inputs[0] = source


def _merge_duplicate_layout_ops(graph: gs.Graph) -> None:
    """A norm folded away between x.transpose(1, 2) and the transpose back can leave a second
    Transpose of the same tensor next to one the graph had (the exporter had cancelled the
    pair around the norm): one is enough; the twin's graph gets the same treatment."""
    graph_outputs = {t.name for t in graph.outputs}
    seen: dict[tuple, gs.Node] = {}
    for node in graph.nodes:
        if node.op not in DEDUPLICABLE or len(node.outputs) != 1 or \
                node.outputs[0].name in graph_outputs:
            continue
        key = (node.op, tuple(id(t) for t in node.inputs),
               tuple(sorted((k, str(v)) for k, v in node.attrs.items())))
        kept = seen.setdefault(key, node)
        if kept is node:
            continue
        out, same = node.outputs[0], kept.outputs[0]
        for reader in list(out.outputs):
            for slot, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[slot] = same
        node.outputs.clear()
        node.inputs.clear()


def _finish(graph: gs.Graph, parts: ModelParts, big: bool, site_reports: list[SiteReport],
            original_ops: Counter[str], online: list) -> tuple[ModelParts, FoldReport]:
    _drop_layout_round_trips(graph)
    _compose_transposes(graph)
    graph.toposort()
    _merge_duplicate_layout_ops(graph)
    graph.fold_constants().cleanup().toposort()  # what the moves made constant
    folded = parts_of(graph, parts)
    for node in graph.nodes:  # let go of every weight the result does not hold, now
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes.clear()
    del graph
    if big:
        gc.collect()
    onnx.checker.check_model(weightless_model(folded), full_check=True)
    ops_after = Counter(node.op_type for node in folded.skeleton.graph.node)
    return folded, FoldReport(site_reports, original_ops, ops_after, online)
