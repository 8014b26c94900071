"""`unfold fold IN.onnx --out OUT.onnx`: fold every offline normalization, write atomically."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli._common import DEBUG, JSON, one_of, run_command, show, stdout
from unfold.errors import ExitCode, UnfoldError
from unfold.fold.report import FP16_MAX, FP16_MAX_SCALE
from unfold.fold.transfer import RULES

if TYPE_CHECKING:  # (onnx is imported when a command runs, not for --help)
    from unfold.fold import FoldReport, SiteReport

SKIP = typer.Option([], "--skip", parser=one_of("--skip", RULES, "a rule"), metavar="RULE",
                    help=f"A rule to leave out, repeatable: {', '.join(RULES)} (`unfold "
                         f"rules`).")
MAX_SCALE = typer.Option(None, "--max-scale",
                         help="Bound on the scale a post-norm residual stream carries: where "
                              "dividing a branch by it would grow weights by more, one Mul "
                              "re-scales the stream (reported). Above 1.")
FP16 = typer.Option(False, "--fp16",
                    help=f"Fold for an fp16 engine: --max-scale {FP16_MAX_SCALE:g} unless "
                         "given, and the weights fp16 cannot hold are reported.")


def max_scale_for(max_scale: float | None, fp16: bool) -> float | None:
    if max_scale is not None and not max_scale > 1.0:
        raise UnfoldError(f"--max-scale {max_scale:g}: must be above 1 (a factor by which "
                          f"folded weights may grow)")
    return FP16_MAX_SCALE if fp16 and max_scale is None else max_scale


def warn_fp16(report: FoldReport) -> None:
    for site in report.fp16_overflows():
        print(f"warning: --fp16: site {site.label}'s folded weights reach "
              f"{site.max_abs_weight_after:.3g}, beyond fp16's {FP16_MAX:g}", file=sys.stderr)


def site_detail(site: SiteReport) -> str:
    """Where a site's affine went (its path, the ops that took it) and why any stayed."""
    where = ", ".join(site.absorbed_by)
    if site.path:
        where = "; ".join([*site.path, where] if where else site.path)
    return "; ".join(filter(None, [where, *site.reasons]))


def render(report: FoldReport) -> None:
    table = Table(title="normalization sites")
    for column in ("site", "kind", "status", "went to / stayed because"):
        table.add_column(column)
    for site in report.sites:
        table.add_row(site.label, site.kind, site.status, site_detail(site))
    for norm in report.online:
        table.add_row(norm.label, norm.kind, "online", norm.reason)
    stdout.print(table)
    ops = Table(title="ops before -> after (changed only)")
    for column in ("op", "before", "after"):
        ops.add_column(column)
    for op in sorted(set(report.ops_before) | set(report.ops_after)):
        if report.ops_before[op] != report.ops_after[op]:
            ops.add_row(op, str(report.ops_before[op]), str(report.ops_after[op]))
    stdout.print(ops)
    stdout.print(f"{len(report.folded)} of {len(report.sites)} offline sites folded, "
                 f"{len(report.left)} left, {len(report.online)} online norms")


def fold(
    model: Path = typer.Argument(..., metavar="MODEL", help="The ONNX model to fold."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the folded model."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 (writing nothing) if any normalization is left."),
    as_json: bool = JSON,
    skip: list[str] = SKIP,
    max_scale: float | None = MAX_SCALE,
    fp16: bool = FP16,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    debug: bool = DEBUG,
) -> None:
    """Fold every offline normalization of MODEL into its neighbouring linear ops."""

    def body() -> ExitCode:
        from unfold.fold import fold_parts
        from unfold.onnx_files import check_output_path, load_onnx_parts, save_onnx_atomic

        bound = max_scale_for(max_scale, fp16)
        target = check_output_path(out, force=force, inputs=(model,))
        folded, report = fold_parts(load_onnx_parts(model), skip=skip, max_scale=bound)
        show(report, as_json, render)
        if fp16:
            warn_fp16(report)
        if strict and not report:
            print("error: --strict: normalization left in the graph; nothing written",
                  file=sys.stderr)
            return ExitCode.CHECK_FAILED
        save_onnx_atomic(folded, target)
        print(f"wrote {target}", file=sys.stderr)
        return ExitCode.OK

    run_command("fold", body, debug)
