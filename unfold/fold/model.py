"""fold_model / fold_parts: prepare an ONNX model, fold every offline norm site away where
the dataflow pass can (dataflow.py), tidy up, check, and report each site. Constants already
computed by constant subgraphs (the authors' Div-by-Sqrt eval form, Swin's window pads under
the TorchScript exporter) are folded first, so the sites see plain constants."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from unfold.errors import UnfoldError, option
from unfold.fold.cleanup import drop_same_type_casts, tidy_layout
from unfold.fold.coverage import shapeless_scales, unreached_norms, whole_model_reason
from unfold.fold.dataflow import fold_graph
from unfold.fold.graph import Names, bypass
from unfold.fold.online import find_online_norms
from unfold.fold.report import FoldReport, SiteReport, torch_module
from unfold.fold.sites import find_affine_sites
from unfold.fold.transfer import RULES
from unfold.fold.weights import import_parts, infer_shapes, parts_of
from unfold.model_parts import (
    ModelParts,
    declared_size_problem,
    graph_problem,
    weight_nbytes,
    weight_proto,
    weightless_model,
)

# A full garbage collection costs about 0.4 s in a process that has imported torch: worth it
# only where the weights are big enough for their copies to matter.
COLLECT_FROM_BYTES = 64 << 20

# Rounds of shape inference and constant folding before the fold: the TorchScript exporter
# computes pads and crops from Shape ops at run time (Swin's window padding); each round makes
# the next level of that arithmetic constant, and the rounds stop as soon as one changes
# nothing. Swin-T at 224 px needs 8 (its fourth stage's pads hang on the first three's
# shapes: 6 left its last two norms "pads are not constant").
MAX_PREPARATION_ROUNDS = 24


def _fold_shape_arithmetic(graph: gs.Graph, skeleton: onnx.ModelProto) -> None:
    """Infer shapes and fold constants until the graph stops shrinking. (onnx-graphsurgeon
    evaluates constant subgraphs in ONNX Runtime, whose optimizer warns about nodes it
    leaves alone: not this tool's user's business.)"""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    _read_shared_weights_directly(graph)
    infer_shapes(graph, skeleton)
    for _ in range(MAX_PREPARATION_ROUNDS):
        before = len(graph.nodes)
        graph.fold_constants().cleanup()
        infer_shapes(graph, skeleton)  # shapes the constant folding made static
        if len(graph.nodes) == before:
            break
    drop_same_type_casts(graph)  # (types are known once the shape arithmetic is constant)


def _read_shared_weights_directly(graph: gs.Graph) -> None:
    """The TorchScript exporter shares a weight between layers (ALBERT) through Identity
    nodes; constant folding would turn each Identity's output into a copy of the weight. Its
    readers read the weight itself instead, so it stays one initializer."""
    graph_outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Identity" or not isinstance(node.inputs[0], gs.Constant) or \
                node.outputs[0].name in graph_outputs:
            continue
        bypass(node, node.inputs[0])
    graph.cleanup()


# the domains whose ops the fold knows: ONNX's own (a custom domain's `MatMul` is not ONNX's)
ONNX_DOMAINS = frozenset({"", "ai.onnx"})


def _hide_foreign_ops(graph: gs.Graph) -> list[tuple[gs.Node, str]]:
    """Every node of another domain gets its domain in its op type for the fold's run
    (`com.example:MatMul`), so that no rule, site or tidy-up, all of which match op types,
    takes it for ONNX's op. Returns what `_restore_foreign_ops` puts back."""
    hidden = []
    for node in graph.nodes:
        domain = node.domain or ""
        if domain not in ONNX_DOMAINS:
            hidden.append((node, node.op))
            node.op = f"{domain}:{node.op}"
    return hidden


def _restore_foreign_ops(hidden: list[tuple[gs.Node, str]]) -> None:
    for node, op in hidden:
        node.op = op


def check_fold_options(skip: Any, max_scale: Any) -> None:
    """`skip` (rule names, `unfold rules`) and `max_scale` (a number above 1), checked by the
    ways into the fold that do work first (convert, fold_file) before any of it."""
    if isinstance(skip, str) or not all(isinstance(rule, str) for rule in skip):
        raise UnfoldError(f"{option('skip', skip)}: expected rule names, e.g. "
                          f"{option('skip', [next(iter(RULES))])}")
    for rule in skip:
        if rule not in RULES:
            raise UnfoldError(f"{option('skip', rule)}: valid: {', '.join(RULES)}")
    if max_scale is not None and (isinstance(max_scale, bool) or not isinstance(
            max_scale, (int, float)) or not max_scale > 1.0):
        raise UnfoldError(f"{option('max_scale', max_scale)}: must be a number above 1 (a "
                          f"factor by which folded weights may grow)")


def fold_model(model: onnx.ModelProto, *, skip: Collection[str] = (),
               in_place: bool = False, max_scale: float | None = None
               ) -> tuple[onnx.ModelProto, FoldReport]:
    """Fold every offline norm the dataflow pass can; the report says where each went or why
    it stayed. The result passes onnx.checker's full check.

    `skip`: rules (`unfold rules`) not to use. `max_scale`: bound on the scale a post-norm
    stream carries (see transfer/residual.py). `in_place=True` folds `model` itself and
    returns it: no copy of its weights; the caller must not need the original.
    (`fold_parts` on a file's parts needs less memory still.)"""
    folded, report = fold_parts(ModelParts.viewing(model), skip=skip, max_scale=max_scale)
    if in_place:
        folded.into(model)
        return model, report
    return folded.to_model(), report


def _note_layout_left(sites: list[SiteReport], envelopes: dict[str, list[gs.Node]],
                      graph: gs.Graph) -> None:
    """A site whose own layout ops outlived it (they compose to the identity around it, so the
    no-norm twin has none of them) is not gone: it counts as left, naming them."""
    alive = {id(node) for node in graph.nodes}
    for site in sites:
        left = [node for node in envelopes.get(site.name, []) if id(node) in alive]
        if not left:
            continue
        site.layout_left = [f"{node.op} '{node.name}'" for node in left]
        site.reasons.append(f"its layout ops stay ({', '.join(site.layout_left)}): around "
                            f"the norm they compose to the identity, and they were not removed")
        if site.status in ("folded", "materialized"):
            site.status = "partial"


@contextmanager
def _collector_paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def fold_parts(parts: ModelParts, *, skip: Collection[str] = (),
               max_scale: float | None = None) -> tuple[ModelParts, FoldReport]:
    """fold_model on a model whose weights are apart (`onnx_files.load_onnx_parts`): each
    weight a fold replaces is freed as it goes, so the peak stays near the weights' size.
    Takes the weights out of `parts`; the result holds the kept ones and the new ones."""
    unknown = set(skip) - set(RULES)
    if unknown:
        raise UnfoldError(f"{option('skip', sorted(unknown))}: unknown rule(s); valid: "
                          f"{', '.join(RULES)}")
    if max_scale is not None and not max_scale > 1.0:
        raise UnfoldError(f"{option('max_scale', max_scale)}: must be a number above 1 (a "
                          f"factor by which folded weights may grow)")
    problem = graph_problem(parts) or declared_size_problem(parts)
    if problem is not None:
        raise UnfoldError(problem)
    original_ops = Counter(node.op_type for node in parts.skeleton.graph.node)
    modules = {node.name: module for node in parts.skeleton.graph.node
               if (module := torch_module(node)) is not None}
    blocked = whole_model_reason(parts)
    if blocked is not None:
        return parts, _report_only(parts, blocked, original_ops, modules)
    big = sum(weight_nbytes(w) for w in parts.weights.values()) >= COLLECT_FROM_BYTES
    # Python's cyclic collector would walk the graph's many small objects again and again (a
    # third of a 128-block fold): replaced weights are freed explicitly (replace_weight), and
    # the cycles that hold big ones are collected explicitly below, so it waits until the end
    with _collector_paused():
        graph = import_parts(parts)
        hidden = _hide_foreign_ops(graph)
        _fold_shape_arithmetic(graph, parts.skeleton)
        # Both made copies of the graph, now garbage in reference cycles that share every
        # weight: until they go, no weight the fold replaces could be freed.
        if big:
            gc.collect()
        shapeless = shapeless_scales(graph)
        result = fold_graph(graph, Names(graph), skip=skip, max_scale=max_scale)
        sites, replanned = result.reports, result.replanned
        graph.cleanup().toposort()
        online = find_online_norms(graph)
        tidy_layout(graph)
        graph.fold_constants().cleanup().toposort()  # what the moves made constant
        _note_layout_left(sites, result.envelopes, graph)
        unreached = shapeless + unreached_norms(graph)
        _restore_foreign_ops(hidden)
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
    for site in sites:
        site.module = modules.get(site.name)
    for norm in online:
        norm.module = modules.get(norm.name)
    return folded, FoldReport(sites, original_ops, ops_after, online, unreached, replanned)


def _report_only(parts: ModelParts, reason: str, ops: Counter[str],
                 modules: dict[str, str]) -> FoldReport:
    """The report on a model the fold does not change (coverage.whole_model_reason): its norm
    sites found and reported as stayed, for `reason`. `parts` is left as it was."""
    from onnx_graphsurgeon.logger import G_LOGGER

    model = onnx.ModelProto()
    model.CopyFrom(parts.skeleton)
    model.graph.initializer.extend(weight_proto(name, w) for name, w in parts.weights.items())
    severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.CRITICAL  # (bf16 casts: moot)
    try:
        graph = gs.import_onnx(model)
        del model
        try:
            infer_shapes(graph, parts.skeleton)
        except Exception:  # noqa: BLE001 - shapes only help find more sites
            pass
        sites = [SiteReport(name=site.name, kind=site.kind, channels=site.channels,
                            reasons=[reason], module=modules.get(site.name))
                 for site in find_affine_sites(graph)]
        online = find_online_norms(graph)
        unreached = [reason] + unreached_norms(graph)
    finally:
        G_LOGGER.severity = severity
    for norm in online:
        norm.module = modules.get(norm.name)
    return FoldReport(sites, ops, Counter(ops), online, unreached)
