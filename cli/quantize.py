"""`unfold quantize MODEL.onnx --out MODEL-int8.onnx --calibrate data.npz`: a static Q/DQ INT8
model (what TensorRT 11 builds INT8 from: explicit quantization), checked against MODEL and
written only where it agrees."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli import _inputs as opt
from cli._common import DEBUG, JSON, run_command, show, stdout
from unfold.errors import ExitCode

if TYPE_CHECKING:
    from unfold.precision.int8 import QuantizeReport


def render(report: QuantizeReport) -> None:
    stdout.print(f"{report.source}: calibrated on {report.calibration}")
    stdout.print(f"Q/DQ pairs: {report.ops.get('QuantizeLinear', 0)} (int8 per-channel "
                 f"weights, int8 activations, symmetric)")
    table = Table(title=f"INT8 against fp32 on the calibration inputs (written where every "
                        f"cosine >= {report.min_cosine:g})")
    for column in ("output", "cosine", "max abs", "of its scale", "result"):
        table.add_column(column)
    for row in report.agreement:
        ok = row.finite and row.cosine >= report.min_cosine
        table.add_row(row.name, f"{row.cosine:.6f}", f"{row.max_abs:.3g}",
                      f"{row.relative:.3g}", "ok" if ok else
                      ("FAIL (non-finite)" if not row.finite else "FAIL"))
    stdout.print(table)


def quantize(
    model: Path = typer.Argument(..., metavar="MODEL", help="The (folded) ONNX model."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the INT8 model."),
    calibrate: Path | None = typer.Option(
        None, "--calibrate", metavar="DATA.npz",
        help="Calibration inputs: arrays named like MODEL's inputs (or arr_0, arr_1, ... in "
             "input order), split into batches along axis 0. Data like what the model will "
             "see: the scales are fitted to it."),
    random_calibration: int | None = typer.Option(
        None, "--random-calibration", metavar="N",
        help="Calibrate on N random batches from the input specs instead (the scales then fit "
             "random data, not the model's: for trying the path, not for deploying)."),
    batch_size: int = typer.Option(16, "--batch-size",
                                   help="Rows per calibration batch (dynamic batch axis)."),
    min_cosine: float = typer.Option(0.99, "--min-cosine",
                                     help="Write only where every output's cosine similarity "
                                          "to MODEL's reaches this."),
    seed: int = typer.Option(0, "--seed", help="Seed of --random-calibration's batches."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """Quantize MODEL to static INT8 (Q/DQ, ONNX Runtime's tool), check it against MODEL, and
    only then write it."""

    def body() -> ExitCode:
        from unfold.precision.int8 import quantize_file

        if random_calibration is not None:
            print(f"warning: --random-calibration {random_calibration}: the INT8 scales come "
                  f"from random inputs, not from data like the model's; its accuracy on real "
                  f"data is unknown", file=sys.stderr)
        report = quantize_file(model, out, calibrate=calibrate,
                               random_calibration=random_calibration, batch_size=batch_size,
                               min_cosine=min_cosine, seed=seed, force=force,
                               progress=opt.progress)
        show(report, as_json, render)
        if report.written is None:
            print(f"error: the INT8 model departs from {model} (cosine below {min_cosine:g}); "
                  f"nothing written", file=sys.stderr)
            return ExitCode.CHECK_FAILED
        print(f"wrote {report.written}", file=sys.stderr)
        return ExitCode.OK

    run_command("quantize", body, debug)
