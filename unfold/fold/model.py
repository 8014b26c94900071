"""fold_model: find every offline norm site of an ONNX model and fold it away where the rules
allow, reporting each site. Constants already computed by constant subgraphs (the authors'
Div-by-Sqrt eval form) are folded first, so the sites see plain constants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import onnx
import onnx_graphsurgeon as gs

from unfold.fold.graph import Names
from unfold.fold.report import FoldReport, SiteReport
from unfold.fold.rules import RULES, Outcome
from unfold.fold.sites import find_sites

# A site moves at most one op per round; no real graph needs more rounds than this.
MAX_ROUNDS = 256


def _op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def fold_model(model: onnx.ModelProto, *,
               skip: Collection[str] = ()) -> tuple[onnx.ModelProto, FoldReport]:
    unknown = set(skip) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rule(s) {sorted(unknown)}; valid: {', '.join(RULES)}")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    graph.fold_constants().cleanup()
    names = Names(graph)
    rules = [rule for name, rule in RULES.items() if name not in skip]
    reports: dict[str, SiteReport] = {}
    origin: dict[str, str] = {}  # first node of a moved site -> the site it came from
    settled: set[str] = set()  # sites no rule changes any more
    for _ in range(MAX_ROUNDS):
        moved = False
        for site in find_sites(graph):
            first = site.nodes[0].name
            if first in settled:
                continue
            key = origin.get(first, site.name)
            report = reports.setdefault(
                key, SiteReport(name=key, kind=site.kind, channels=site.channels))
            report.reasons.clear()  # only the reasons of where it ends up count
            outcome = Outcome()
            for rule in rules:
                outcome = rule.apply(site, graph, names, report)
                if outcome.gone:
                    break
            if outcome.moved_to:
                origin[outcome.moved_to[0].name] = key
                moved = True
            elif outcome.gone:
                report.status = "folded"
            else:
                settled.add(first)
                report.status = "partial" if report.absorbed_by else "stayed"
        graph.cleanup().toposort()
        if not moved:
            break
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    onnx.checker.check_model(folded, full_check=True)
    return folded, FoldReport(list(reports.values()), _op_counts(model), _op_counts(folded))
