"""`unfold build MODEL.onnx --out MODEL.plan`: a strongly typed TensorRT 10 / 11 engine,
written atomically; `--fp16` / `--bf16` convert the graph to that type first.

Every option and the model are checked first (exit 2), then TensorRT is looked for (exit 3
without it or a GPU): bad input is reported the same on a machine without TensorRT."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli._common import DEBUG, JSON, run_command, show, stdout
from unfold.errors import ExitCode, UnfoldError
from unfold.numerics import FP16_MAX

if TYPE_CHECKING:  # (onnx is imported when a command runs, not for --help)
    from unfold.engines.trt import BuildReport, ShapeRange

SHAPES = typer.Option([], "--shapes", metavar="NAME:MIN/OPT/MAX",
                      help="The shapes one input takes, e.g. "
                           "x:1x3x224x224/8x3x224x224/32x3x224x224 (NAME:DIMS: one fixed "
                           "shape); repeat for each input with dynamic dims. The engine runs "
                           "MIN to MAX, tuned for OPT; inputs not given take the model's "
                           "static dims.")
FP16 = typer.Option(False, "--fp16",
                    help=f"Convert the graph to fp16 (weights and compute; inputs and outputs "
                         f"as declared, Casts at the edges; ops that need fp32 stay fp32, "
                         f"reported) and build it strongly typed. A weight past {FP16_MAX:g} "
                         f"is refused by name; those below fp16's smallest normal 6.1e-5 are "
                         f"reported.")
BF16 = typer.Option(False, "--bf16",
                    help="Convert the graph to bf16 (fp32's range, 8 significant bits) and "
                         "build it strongly typed; needs an Ampere or newer GPU.")
WORKSPACE = typer.Option(None, "--workspace", metavar="GiB",
                         help="GPU memory TensorRT may use for scratch while it builds "
                              "(default: TensorRT's, the whole GPU's).")
TIMING_CACHE = typer.Option(None, "--timing-cache", metavar="FILE",
                            help="TensorRT's kernel timings: read if FILE exists, written back "
                                 "after the build, so that a rebuild on the same GPU and "
                                 "TensorRT version is faster.")


SHAPES_FORM = ("NAME:MIN/OPT/MAX, each shape positive integers joined by 'x' (e.g. "
               "x:1x3x224x224/8x3x224x224/32x3x224x224), or NAME:DIMS for one fixed shape")


def parse_shape_ranges(texts: Sequence[str]) -> dict[str, ShapeRange]:
    """`--shapes`, repeatable: `NAME:MIN/OPT/MAX` (or `NAME:DIMS`, one fixed shape) -> name ->
    its range. The syntax and each range's own consistency (one rank, min <= opt <= max) only:
    no model is needed, so a typo fails before anything is loaded; `resolve_profile` checks
    the ranges against the model's inputs."""
    from unfold.engines.trt import ShapeRange

    ranges: dict[str, ShapeRange] = {}
    for text in texts:
        name, colon, spec = text.rpartition(":")  # (an ONNX name may hold a ':' itself)
        if not colon or not name:
            raise UnfoldError(f"--shapes {text!r}: no input name; expected {SHAPES_FORM}")
        parts = spec.split("/")
        if len(parts) not in (1, 3):
            raise UnfoldError(f"--shapes {text!r}: {len(parts)} shapes; expected three "
                              f"(MIN/OPT/MAX) or one (fixed): {SHAPES_FORM}")
        shapes = []
        for label, part in zip(("min", "opt", "max") if len(parts) == 3 else ("shape",), parts,
                               strict=True):
            if not re.fullmatch(r"\d+(x\d+)*", part) or any(int(d) == 0 for d in part.split("x")):
                raise UnfoldError(f"--shapes {text!r}: {label} {part!r} is not a shape; expected "
                                  f"positive integers joined by 'x', e.g. 1x3x224x224")
            shapes.append(tuple(int(d) for d in part.split("x")))
        low, opt, high = shapes if len(shapes) == 3 else shapes * 3
        if not len(low) == len(opt) == len(high):
            raise UnfoldError(f"--shapes {text!r}: min, opt and max have {len(low)}, {len(opt)} "
                              f"and {len(high)} dims; all three need the input's rank")
        for axis, (a, b, c) in enumerate(zip(low, opt, high, strict=True)):
            if not a <= b <= c:
                order = "min > opt" if a > b else "opt > max"
                raise UnfoldError(f"--shapes {text!r}: axis {axis} is {a}/{b}/{c} ({order}); "
                                  f"need min <= opt <= max on every axis")
        if name in ranges:
            raise UnfoldError(f"--shapes {text!r}: {name} was given already "
                              f"({name}:{ranges[name].describe()}); give one range per input")
        ranges[name] = ShapeRange(low, opt, high)
    return ranges


def workspace_bytes_for(gib: float | None) -> int | None:
    """`--workspace` in GiB -> bytes (None: TensorRT's default, the whole GPU's memory)."""
    if gib is None:
        return None
    if not 2**-10 <= gib < float("inf"):
        raise UnfoldError(f"--workspace {gib:g}: must be a number of GiB, 0.001 (1 MiB) or more "
                          f"(the GPU memory TensorRT may use for scratch while it builds), e.g. "
                          f"4")
    return max(1, int(gib * 2**30))


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
    types = ", ".join(f"{count} {label}" for label, count in sorted(report.tensors.items()))
    stdout.print(f"engine {report.engine}: {_mib(report.engine_bytes)}, built in "
                 f"{report.build_seconds:.1f} s by TensorRT {report.tensorrt}, strongly typed "
                 f"({report.precision}; float tensors: {types or 'none'})")
    if report.conversion is not None:
        stdout.print(f"graph converted: {report.conversion.describe()}")
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
    """Build MODEL into a strongly typed TensorRT 10 / 11 engine (one optimization profile),
    written to --out."""

    def body() -> ExitCode:
        from unfold.engines.trt import (
            build_engine,
            check_timing_cache_path,
            resolve_profile,
        )
        from unfold.onnx_files import check_not_read, check_output_path, load_onnx_parts
        from unfold.precision.ranges import fp16_range_report

        if fp16 and bf16:
            raise UnfoldError("--fp16 and --bf16: give one; a strongly typed engine computes "
                              "each tensor in the one type its graph gives it (TensorRT 11 has "
                              "no other mode)")
        precision = "fp16" if fp16 else "bf16" if bf16 else None
        given = parse_shape_ranges(shapes)
        workspace_bytes = workspace_bytes_for(workspace)
        target = check_output_path(out, force=force, inputs=(model,))
        cache = None if timing_cache is None else \
            check_timing_cache_path(timing_cache, inputs=(model, target))
        parts = load_onnx_parts(model)
        check_not_read(target, parts.sources)  # (its external data, whatever --force says)
        if cache is not None:
            check_not_read(cache, parts.sources, parameter="timing_cache")
        profile = resolve_profile(parts, given)
        fp16_range = fp16_range_report(parts) if fp16 else None
        del parts  # (TensorRT reads the model from its file)
        if fp16_range is not None:  # (a report is true when every weight fits)
            for line in fp16_range.warnings():
                print(f"warning: {line}", file=sys.stderr)
        report = build_engine(model, target, profile, precision=precision,
                              workspace_bytes=workspace_bytes, timing_cache=cache, force=force)
        report.fp16_range = fp16_range
        show(report, as_json, render)
        print(f"wrote {target}", file=sys.stderr)
        return ExitCode.OK

    run_command("build", body, debug)
