"""`unfold inspect MODEL.onnx`: the normalization sites of any ONNX, online or offline, and
whether each can be folded (by running the fold, writing nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli._common import DEBUG, JSON, run_command, show, stdout
from cli.fold import site_detail
from unfold.errors import ExitCode

if TYPE_CHECKING:
    from unfold.fold import FoldReport

# what the fold would make of a site (FoldReport's statuses say what it did)
WOULD = {"folded": "would fold", "materialized": "would fold into one Mul+Add at an output",
         "partial": "would partly fold", "stayed": "would stay", "kept": "kept (no norm)"}


def render_inspect(report: FoldReport) -> None:
    for sentence in report.unreached:
        stdout.print(f"not reached: {sentence}")
    if not report.sites and not report.online:
        if not report.unreached:
            stdout.print("no normalization found: nothing to fold")
        return
    table = Table(title="normalization sites")
    for column in ("site", "kind", "fold", "into / why not"):
        table.add_column(column)
    for site in report.sites:
        table.add_row(site.label, site.kind, WOULD.get(site.status, site.status),
                      site_detail(site))
    for norm in report.online:
        table.add_row(norm.label, norm.kind, "online: stays", norm.reason)
    stdout.print(table)
    would = sum(s.status in ("folded", "materialized") for s in report.sites)
    stdout.print(f"{len(report.sites)} offline sites: {would} would fold, "
                 f"{len(report.sites) - would} would not entirely; "
                 f"{len(report.online)} online norms (they stay); "
                 f"`unfold fold` writes the folded model")


def inspect(
    model: Path = typer.Argument(..., metavar="MODEL", help="Any ONNX model."),
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """List MODEL's normalization sites: offline (foldable or why not) and online."""

    def body() -> ExitCode:
        from unfold.fold import fold_parts
        from unfold.onnx_files import load_onnx_parts

        _, report = fold_parts(load_onnx_parts(model))  # the weights apart, as fold does
        show(report, as_json, render_inspect)
        return ExitCode.OK

    run_command("inspect", body, debug)
