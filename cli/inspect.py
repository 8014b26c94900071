"""`unfold inspect MODEL.onnx`: the normalization sites of any ONNX, online or offline, and
whether each can be folded (by running the fold, writing nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli._common import run_command, stdout
from cli.fold import render
from unfold.errors import ExitCode


def inspect(
    model: Path = typer.Argument(..., help="Any ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """List MODEL's normalization sites: offline (foldable or why not) and online."""

    def body() -> ExitCode:
        from unfold.fold import fold_parts
        from unfold.onnx_files import load_onnx_parts

        _, report = fold_parts(load_onnx_parts(model))  # the weights apart, as fold does
        if as_json:
            stdout.print_json(json.dumps(report.to_dict()))
        else:
            render(report)
        return ExitCode.OK

    run_command("inspect", body, debug)
