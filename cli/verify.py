"""`unfold verify REFERENCE CANDIDATE`: run both on the same inputs, compare every output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli import _inputs as opt
from cli._common import DEBUG, JSON, one_of, run_command, show, stdout
from unfold.engines import ENGINES
from unfold.errors import ExitCode

if TYPE_CHECKING:  # (torch is imported when a command runs, not for --help)
    from unfold.verification import VerifyReport


def render_verification(report: VerifyReport) -> None:
    table = Table(title=f"outputs: {report.candidate} vs {report.reference}")
    for column in ("batch", "output", "max abs", "allowed", "max rel", "cosine", "result"):
        table.add_column(column)
    for batch in report.batches:
        for out in batch.outputs:
            result = "ok" if out else (out.problem or f"FAIL (would need rtol "
                                                       f"{out.needed_rtol:.2g})")
            table.add_row(batch.label, out.name, f"{out.max_abs:.3g}", f"{out.allowed:.3g}",
                          f"{out.max_rel:.3g}", f"{out.cosine:.9f}", result)
    stdout.print(table)
    for note in report.notes:
        stdout.print(note)
    if report.divergence:
        stdout.print(report.divergence.describe())


def verify(
    reference: Path = typer.Argument(..., metavar="REFERENCE",
                                     help="model.pt (run by torch) or an .onnx (run by ONNX "
                                          "Runtime)."),
    candidate: Path = typer.Argument(..., metavar="CANDIDATE",
                                     help="The .onnx to check (or another model.pt)."),
    engine: str = typer.Option("ort", "--engine", parser=one_of("--engine", ENGINES, "an engine"),
                               metavar="ENGINE",
                               help=f"What runs CANDIDATE: {', '.join(ENGINES)}."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    arch: str | None = opt.ARCH,
    arch_kwargs: str | None = opt.ARCH_KWARGS,
    swap: str | None = opt.SWAP,
    trust: bool = opt.TRUST,
    input_shape: list[str] = opt.INPUT_SHAPE,
    input_dtype: list[str] = opt.INPUT_DTYPE,
    int_range: list[str] = opt.INT_RANGE,
    float_range: list[str] = opt.FLOAT_RANGE,
    dynamic: str | None = opt.DYNAMIC,
    inputs: Path | None = opt.INPUTS,
    atol: list[str] = opt.ATOL,
    rtol: list[str] = opt.RTOL,
    seed: int = typer.Option(0, "--seed", help="Seed of the random batches."),
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """Check that CANDIDATE computes what REFERENCE computes, within explicit tolerances."""

    def body() -> ExitCode:
        given = opt.input_options(input_shape, input_dtype, int_range, float_range, dynamic,
                                  inputs)
        tolerances = opt.parse_tolerance("--atol", atol), opt.parse_tolerance("--rtol", rtol)
        kwargs = opt.parse_arch_kwargs(arch_kwargs)
        from unfold.pipeline import verify as verify_models

        report = verify_models(
            reference, candidate, engine=engine, device=device, arch=arch, arch_kwargs=kwargs,
            trust=trust, swap=swap, inputs=given, atol=tolerances[0], rtol=tolerances[1], seed=seed,
            progress=opt.progress)
        show(report, as_json, render_verification)
        if not report:
            print("error: outputs differ beyond tolerance", file=sys.stderr)
            return ExitCode.CHECK_FAILED
        return ExitCode.OK

    run_command("verify", body, debug)
