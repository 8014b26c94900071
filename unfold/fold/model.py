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
from unfold.fold.rules import RULES
from unfold.fold.sites import find_sites


def _op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def fold_model(model: onnx.ModelProto, *,
               skip: Collection[str] = ()) -> tuple[onnx.ModelProto, FoldReport]:
    unknown = set(skip) - set(RULES)
    if unknown:
        raise ValueError(f"unknown rule(s) {sorted(unknown)}; valid: {', '.join(RULES)}")
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup()
    names = Names(graph)
    reports = []
    for site in find_sites(graph):
        report = SiteReport(name=site.name, kind=site.kind, channels=site.channels)
        gone = False
        for rule_name, rule in RULES.items():
            if rule_name in skip:
                continue
            gone = rule.apply(site, graph, names, report)
            if gone:
                break
        report.status = "folded" if gone else ("partial" if report.absorbed_by else "stayed")
        reports.append(report)
    graph.cleanup().toposort()
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    onnx.checker.check_model(folded, full_check=True)
    return folded, FoldReport(reports, _op_counts(model), _op_counts(folded))
