"""`unfold fold IN.onnx --out OUT.onnx`: fold every offline normalization, verify the result
against IN.onnx in ONNX Runtime, and only then write it (atomically)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from cli import _inputs as opt
from cli._common import DEBUG, JSON, one_of, run_command, show, stdout
from unfold.errors import ExitCode
from unfold.fold.transfer import RULES
from unfold.numerics import FP16_MAX, FP16_MAX_SCALE, stream_bound
from unfold.precision import PRECISIONS

if TYPE_CHECKING:  # (onnx is imported when a command runs, not for --help)
    from unfold.fold import FoldReport, SiteReport
    from unfold.fold_files import FoldFileReport
    from unfold.precision.half import HalfReport
    from unfold.verification import VerifyReport

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

PRECISION = typer.Option(None, "--precision", parser=one_of("--precision", PRECISIONS,
                                                            "a precision"),
                         metavar="TYPE",
                         help="Write the folded graph in fp16 or bf16 (weights and compute; "
                              "inputs and outputs stay as declared, Casts at the edges; nodes "
                              "that need fp32 for range stay fp32, reported), checked with that "
                              "type's tolerances on a CPU engine (fp16: ONNX Runtime, bf16: "
                              "OpenVINO). fp16 implies --fp16's --max-scale.")


def render_precision(report: HalfReport | None, verification: VerifyReport | None) -> None:
    """The half graph's conversion and its check, where a precision was asked for."""
    from cli.verify import render_verification

    if report is None:
        return
    stdout.print(f"precision {report.describe()}")
    if verification is not None:
        render_verification(verification)


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
    for sentence in report.unreached:
        stdout.print(f"not reached: {sentence}")
    for sentence in report.replanned:  # (an inefficiency of the fold, never a wrong number)
        stdout.print(f"the rewrite could not do what was decided: {sentence}")
    stdout.print(f"{len(report.folded)} of {len(report.sites)} offline sites folded, "
                 f"{len(report.left)} left, {len(report.online)} online norms")


ENDINGS = {
    "written": ("wrote {written}", ExitCode.OK),
    "mismatch": ("error: the {what} model does not compute what {model} does; nothing "
                 "written", ExitCode.CHECK_FAILED),
    "norms left": ("error: --strict: normalization left in the graph; nothing written",
                   ExitCode.CHECK_FAILED),
}


def render_fold_file(report: FoldFileReport) -> None:
    from cli.verify import render_verification

    render(report.fold)
    if report.verification is not None:
        render_verification(report.verification)
    render_precision(report.precision, report.precision_verification)
    for note in report.notes:
        stdout.print(f"note: {note}")


def fold(
    model: Path = typer.Argument(..., metavar="MODEL", help="The ONNX model to fold."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the folded model."),
    strict: bool = typer.Option(False, "--strict",
                                help="Exit 1 (writing nothing) if any normalization is left."),
    as_json: bool = JSON,
    skip: list[str] = SKIP,
    max_scale: float | None = MAX_SCALE,
    fp16: bool = FP16,
    precision: str | None = PRECISION,
    input_shape: list[str] = opt.INPUT_SHAPE,
    input_dtype: list[str] = opt.INPUT_DTYPE,
    int_range: list[str] = opt.INT_RANGE,
    float_range: list[str] = opt.FLOAT_RANGE,
    dynamic: str | None = opt.DYNAMIC,
    inputs: Path | None = opt.INPUTS,
    atol: list[str] = opt.ATOL,
    rtol: list[str] = opt.RTOL,
    no_verify: bool = typer.Option(False, "--no-verify",
                                   help="Write without checking the folded model against "
                                        "MODEL in ONNX Runtime (not advised)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random verification batches."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    debug: bool = DEBUG,
) -> None:
    """Fold every offline normalization of MODEL into its neighbouring linear ops, check the
    result against MODEL in ONNX Runtime, and only then write it."""

    def body() -> ExitCode:
        given = opt.input_options(input_shape, input_dtype, int_range, float_range, dynamic,
                                  inputs)
        tolerances = opt.parse_tolerance("--atol", atol), opt.parse_tolerance("--rtol", rtol)
        from unfold.fold_files import fold_file

        bound = stream_bound(max_scale, fp16)
        if no_verify:
            print("warning: --no-verify: the folded model will NOT be checked against "
                  f"{model}", file=sys.stderr)
        report = fold_file(model, out, skip=skip, max_scale=bound, strict=strict, force=force,
                           verify=not no_verify, inputs=given, atol=tolerances[0],
                           rtol=tolerances[1], seed=seed, precision=precision,
                           progress=opt.progress)
        show(report, as_json, render_fold_file)
        if fp16 or precision == "fp16":
            warn_fp16(report.fold)
        message, code = ENDINGS[report.outcome]
        what = precision if report.precision_verification is not None and \
            not report.precision_verification else "folded"
        print(message.format(written=report.written, model=model, what=what), file=sys.stderr)
        return code

    run_command("fold", body, debug)
