"""`unfold convert model.pt --out model.onnx`: load, export, fold, verify against torch, and
only then write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli import _inputs as opt
from cli._common import DEBUG, JSON, one_of, run_command, show, stdout
from cli.fold import (
    FP16,
    MAX_SCALE,
    PRECISION,
    SKIP,
    render,
    render_precision,
    warn_fp16,
)
from cli.verify import render_verification
from unfold.errors import ExitCode
from unfold.export import EXPORTERS
from unfold.numerics import stream_bound

if TYPE_CHECKING:  # (torch is imported when a command runs, not for --help)
    from unfold.pipeline import ConvertReport


# what the command says, and its exit code, for each way a conversion ends
ENDINGS = {
    "written": ("wrote {written}", ExitCode.OK),
    "mismatch": ("error: the {what} ONNX does not match torch; nothing written",
                 ExitCode.CHECK_FAILED),
    "norms left": ("error: --strict: normalization left in the graph; nothing written",
                   ExitCode.CHECK_FAILED),
}


def render_convert(report: ConvertReport) -> None:
    stdout.print(f"{report.source}: {report.format}")
    for spec in report.inputs:
        stdout.print(f"  input {spec.describe()}")
    exporter = f"exported with the {report.exporter} exporter, opset {report.opset}"
    if report.fallback_reason:
        exporter += f" (fallback: {report.fallback_reason})"
    stdout.print(exporter)
    render(report.fold)
    if report.verification is not None:
        render_verification(report.verification)
    render_precision(report.precision, report.precision_verification)
    for note in report.notes:
        stdout.print(f"note: {note}")
    stdout.print("time per stage: " + ", ".join(f"{k} {v:.1f}s"
                                               for k, v in report.seconds.items()))


def convert(
    model: Path = typer.Argument(..., metavar="MODEL",
                                 help="The trained model: .pt2 (torch.export), TorchScript, "
                                      "state dict or checkpoint (--arch), pickled module "
                                      "(--trust)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the folded ONNX."),
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
    exporter: str = typer.Option("auto", "--exporter",
                                 parser=one_of("--exporter", EXPORTERS, "an exporter"),
                                 metavar="EXPORTER",
                                 help=f"{', '.join(EXPORTERS)} (auto: dynamo, falling back to "
                                      f"the TorchScript exporter)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the "
                                                           "exporter's)."),
    atol: list[str] = opt.ATOL,
    rtol: list[str] = opt.RTOL,
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="Write without checking against torch (not advised)."),
    skip: list[str] = SKIP,
    max_scale: float | None = MAX_SCALE,
    fp16: bool = FP16,
    precision: str | None = PRECISION,
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 (writing nothing) if any normalization is left."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random verification batches."),
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """Convert a trained model to a verified ONNX with every offline normalization folded."""

    def body() -> ExitCode:
        given = opt.input_options(input_shape, input_dtype, int_range, float_range, dynamic,
                                  inputs)
        tolerances = opt.parse_tolerance("--atol", atol), opt.parse_tolerance("--rtol", rtol)
        kwargs = opt.parse_arch_kwargs(arch_kwargs)
        from unfold.pipeline import convert as convert_model

        bound = stream_bound(max_scale, fp16)
        if no_verify:
            print("warning: --no-verify: the output will NOT be checked against torch",
                  file=sys.stderr)
        report = convert_model(
            model, out, arch=arch, arch_kwargs=kwargs, trust=trust, swap=swap, inputs=given,
            exporter=exporter, opset=opset, verify=not no_verify, atol=tolerances[0],
            rtol=tolerances[1],
            skip=skip, max_scale=bound, force=force, seed=seed, strict=strict,
            precision=precision, progress=opt.progress)
        show(report, as_json, render_convert)
        if fp16 or precision == "fp16":
            warn_fp16(report.fold)
        message, code = ENDINGS[report.outcome]
        what = precision if report.precision_verification is not None and \
            not report.precision_verification else "folded"
        print(message.format(written=report.written, what=what), file=sys.stderr)
        return code

    run_command("convert", body, debug)
