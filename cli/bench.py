"""`unfold bench MODEL [MORE ...] --engine ort|openvino|trt|torch`: time models in interleaved
rounds on one engine and compare them with a baseline (unfold/bench)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from cli import _inputs as opt
from cli._common import DEBUG, one_of, run_command, stdout
from unfold.engines import ENGINES
from unfold.errors import ExitCode, UnfoldError

if TYPE_CHECKING:
    from unfold.bench import BenchReport


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",")]
        assert batches and all(b >= 1 for b in batches)
    except (ValueError, AssertionError):
        raise UnfoldError(f"--batch {text!r}: expected positive batch sizes joined by commas, "
                          f"e.g. --batch 1,8") from None
    return batches


def render_bench(report: BenchReport) -> None:
    for batch in report.batches:
        table = Table(title=f"batch {batch}: {report.runtime}, {report.threads} threads")
        for column in ("model", "median ms", "p90 ms", "p99 ms", "items/s", "peak MiB",
                       f"/ {report.baseline} [95%]"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in report.for_batch(batch):
            memory = f"{r.memory.peak_mib:.0f}" if r.memory else "-"
            ratio = r.ratio.describe() if r.ratio else "1 (baseline)"
            table.add_row(r.model, f"{r.latency.median * 1e3:.3f}", f"{r.latency.p90 * 1e3:.3f}",
                          f"{r.latency.p99 * 1e3:.3f}", f"{r.throughput:.1f}", memory, ratio)
        stdout.print(table)
    rounds = f"{report.rounds} rounds" if report.rounds else \
        f"{report.results[0].latency.rounds} rounds in {report.seconds_budget:g} s"
    stdout.print(f"{rounds} interleaved after {report.warmup} warm-up, "
                 f"{report.environment.get('cpu', '')}; a ratio whose interval holds 1 is noise")


def bench(
    models: list[Path] = typer.Argument(..., metavar="MODEL...",
                                        help="Models to compare: .onnx files (ort, openvino, "
                                             "trt), model.pt files (torch)."),
    engine: str = typer.Option("ort", "--engine", parser=one_of("--engine", ENGINES,
                                                                "an engine"),
                               metavar="ENGINE", help=f"What runs them: {', '.join(ENGINES)}."),
    batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8."),
    threads: int | None = typer.Option(None, "--threads",
                                       help="Intra-op threads (default: the CPUs available)."),
    rounds: int | None = typer.Option(None, "--rounds",
                                      help="Timed rounds per batch (default 100)."),
    seconds: float | None = typer.Option(None, "--seconds",
                                         help="Or: time rounds for this long per batch."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed rounds first."),
    baseline: str | None = typer.Option(None, "--baseline", metavar="NAME",
                                        help="The model the ratios are to, by its file's stem "
                                             "(default: the first)."),
    json_out: Path | None = typer.Option(None, "--json", metavar="FILE",
                                         help="Write every round and the environment here."),
    plot: Path | None = typer.Option(None, "--plot", metavar="PNG",
                                     help="Draw the result (the `plot` extra)."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Measure each model's peak memory in its own process."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    compile_: bool = typer.Option(False, "--compile", help="--engine torch: torch.compile."),
    input_shape: list[str] = opt.INPUT_SHAPE,
    input_dtype: list[str] = opt.INPUT_DTYPE,
    int_range: list[str] = opt.INT_RANGE,
    float_range: list[str] = opt.FLOAT_RANGE,
    dynamic: str | None = opt.DYNAMIC,
    arch: str | None = opt.ARCH,
    arch_kwargs: str | None = opt.ARCH_KWARGS,
    swap: str | None = opt.SWAP,
    trust: bool = opt.TRUST,
    seed: int = typer.Option(0, "--seed", help="Seed of the random inputs."),
    force: bool = typer.Option(False, "--force", help="Overwrite --json / --plot files."),
    debug: bool = DEBUG,
) -> None:
    """Time MODELs on one engine, interleaved, and compare each with the baseline."""

    def body() -> ExitCode:
        from unfold.bench import bench as run_bench
        from unfold.bench import check_bench_options
        from unfold.onnx_files import check_output_path, write_bytes_atomic

        batches = parse_batches(batch)
        given = opt.input_options(input_shape, input_dtype, int_range, float_range, dynamic,
                                  None)
        kwargs = opt.parse_arch_kwargs(arch_kwargs)
        check_bench_options(engine=engine, batches=batches, threads=threads, rounds=rounds,
                            seconds=seconds, warmup=warmup, seed=seed, device=device)
        for parameter, path in (("json", json_out), ("plot", plot)):
            if path is not None:
                check_output_path(path, force=force, inputs=tuple(models), parameter=parameter)
        if plot is not None:
            from unfold.bench.plot import require_matplotlib

            require_matplotlib()
        progress = _ProgressBar()
        try:
            report = run_bench(
                models, engine=engine, batches=batches, threads=threads, rounds=rounds,
                seconds=seconds, warmup=warmup, baseline=baseline,
                inputs=given,
                device=device, compile=compile_, memory=memory, seed=seed, trust=trust,
                arch=arch, arch_kwargs=kwargs, swap=swap, progress=progress)
        finally:
            progress.close()
        render_bench(report)
        if json_out is not None:
            text = json.dumps(report.to_dict(), indent=1) + "\n"
            print(f"wrote {write_bytes_atomic(text.encode(), json_out, force=force)}",
                  file=sys.stderr)
        if plot is not None:
            from unfold.bench.plot import save_plot

            print(f"wrote {save_plot(report, plot)}", file=sys.stderr)
        return ExitCode.OK

    run_command("bench", body, debug)


class _ProgressBar:
    """Rounds done per batch, on stderr: a bar on a terminal, one line per batch elsewhere."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(stderr=True)
        self.bar = Progress(TextColumn("[unfold] timing batch {task.fields[batch]}"),
                            BarColumn(), MofNCompleteColumn(), console=console,
                            transient=True) if console.is_terminal else None
        self.tasks: dict[int, Any] = {}

    def __call__(self, batch: int, done: int, total: int | None) -> None:
        if batch not in self.tasks:
            if self.bar is None:
                print(f"[unfold] timing batch {batch} ...", file=sys.stderr, flush=True)
            else:
                if not self.tasks:
                    self.bar.start()
            self.tasks[batch] = self.bar.add_task("", total=total, batch=batch) \
                if self.bar is not None else None
        if self.bar is not None:
            self.bar.update(self.tasks[batch], completed=done)

    def close(self) -> None:
        if self.bar is not None and self.tasks:
            self.bar.stop()
