"""`unfold build MODEL.onnx --out MODEL.plan`: a TensorRT 10 engine, written atomically.

Every option and the model are checked first (exit 2), then TensorRT is looked for (exit 3
without it or a GPU): bad input is reported the same on a machine without TensorRT."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli._common import DEBUG, JSON, run_command, show, stdout
from unfold.errors import ExitCode
from unfold.fold.report import FP16_MAX

if TYPE_CHECKING:  # (onnx is imported when a command runs, not for --help)
    from unfold.engines.trt import BuildReport

SHAPES = typer.Option([], "--shapes", metavar="NAME:MIN/OPT/MAX",
                      help="The shapes one input takes, e.g. "
                           "x:1x3x224x224/8x3x224x224/32x3x224x224 (NAME:DIMS: one fixed "
                           "shape); repeat for each input with dynamic dims. The engine runs "
                           "MIN to MAX, tuned for OPT; inputs not given take the model's "
                           "static dims.")
FP16 = typer.Option(False, "--fp16",
                    help=f"Let TensorRT run layers in fp16. The weights fp16 cannot hold (past "
                         f"{FP16_MAX:g}, or below its smallest normal 6.1e-5) are reported "
                         f"first.")
BF16 = typer.Option(False, "--bf16",
                    help="Let TensorRT run layers in bf16 (fp32's range, 8 significant bits). "
                         "With --fp16 too, TensorRT picks per layer.")
WORKSPACE = typer.Option(None, "--workspace", metavar="GiB",
                         help="GPU memory TensorRT may use for scratch while it builds "
                              "(default: TensorRT's, the whole GPU's).")
TIMING_CACHE = typer.Option(None, "--timing-cache", metavar="FILE",
                            help="TensorRT's kernel timings: read if FILE exists, written back "
                                 "after the build, so that a rebuild on the same GPU and "
                                 "TensorRT version is faster.")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def render(report: BuildReport) -> None:
    table = Table(title="optimization profile")
    for column in ("input", "min", "opt", "max"):
        table.add_column(column)
    for name, shapes in report.profile.items():
        table.add_row(name, *("x".join(map(str, s)) for s in (shapes.min, shapes.opt,
                                                              shapes.max)))
    stdout.print(table)
    stdout.print(f"engine {report.engine}: {_mib(report.engine_bytes)}, built in "
                 f"{report.build_seconds:.1f} s by TensorRT {report.tensorrt} "
                 f"({', '.join(report.precisions)})")
    if report.timing_cache is not None:
        read = (f"read {_mib(report.timing_cache_read_bytes)}"
                if report.timing_cache_read_bytes else "new")
        stdout.print(f"timing cache {report.timing_cache}: {read}, wrote "
                     f"{_mib(report.timing_cache_written_bytes)}")


def build(
    model: Path = typer.Argument(..., metavar="MODEL", help="The ONNX model to build."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the engine (.plan)."),
    fp16: bool = FP16,
    bf16: bool = BF16,
    shapes: list[str] = SHAPES,
    workspace: float | None = WORKSPACE,
    timing_cache: Path | None = TIMING_CACHE,
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """Build MODEL into a TensorRT 10 engine (one optimization profile), written to --out."""

    def body() -> ExitCode:
        from unfold.engines.precision import fp16_range_report
        from unfold.engines.trt import (
            build_engine,
            check_timing_cache_path,
            parse_shape_ranges,
            require_tensorrt,
            resolve_profile,
            workspace_bytes_for,
        )
        from unfold.onnx_files import check_output_path, load_onnx_parts

        given = parse_shape_ranges(shapes)
        workspace_bytes = workspace_bytes_for(workspace)
        target = check_output_path(out, force=force, inputs=(model,))
        cache = None if timing_cache is None else \
            check_timing_cache_path(timing_cache, inputs=(model, target))
        parts = load_onnx_parts(model)
        profile = resolve_profile(parts, given)
        fp16_range = fp16_range_report(parts) if fp16 else None
        del parts  # (TensorRT reads the model from its file)
        if fp16_range is not None:  # (a report is true when every weight fits)
            for line in fp16_range.warnings(bf16=bf16):
                print(f"warning: {line}", file=sys.stderr)
        require_tensorrt()
        report = build_engine(model, target, profile, fp16=fp16, bf16=bf16,
                              workspace_bytes=workspace_bytes, timing_cache=cache, force=force)
        report.fp16_range = fp16_range
        show(report, as_json, render)
        print(f"wrote {target}", file=sys.stderr)
        return ExitCode.OK

    run_command("build", body, debug)
