"""`unfold inspect MODEL.onnx`: the normalization sites of any ONNX, online or offline, and
whether each can be folded (by running the fold, writing nothing)."""

from __future__ import annotations

from pathlib import Path

import typer

from cli._common import DEBUG, JSON, run_command, show
from cli.fold import render
from unfold.errors import ExitCode


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
        show(report, as_json, render)
        return ExitCode.OK

    run_command("inspect", body, debug)
