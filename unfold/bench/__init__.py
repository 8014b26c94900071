"""Timing and memory, honestly (BENCHMARKS.md): several models on one engine, warmed up, then
timed in interleaved rounds (A B C, B C A, C A B, ...), per batch size; median / p90 / p99
latency, throughput, each model's peak memory in a process of its own, and each model's
per-round ratio to a baseline with a bootstrap 95% interval.

    report = unfold.bench.bench(["ln.onnx", "un-folded.onnx", "none.onnx"], engine="ort",
                                batches=(1, 8), threads=2, rounds=200, baseline="none")
    report.results[0].latency.median, report.results[0].ratio.describe()

Models are named by their file's stem (`un-folded.onnx` is `un-folded`). Nothing here asserts a
timing; `tests/bench` checks the mechanics.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unfold.bench.memory import MemoryUse, measure_in_child
from unfold.bench.models import Target, load_target
from unfold.bench.stats import Latency, Ratio, ratio_interval
from unfold.bench.timing import interleaved
from unfold.engines import check_device, check_engine
from unfold.errors import UnfoldError, option
from unfold.inputs import Inputs, check_inputs, check_seed
from unfold.norm_kinds import check_swap

# (batch, rounds done, rounds in all or None for a time budget): a progress bar
Progress = Callable[[int, int, int | None], None]


@dataclass
class BenchResult:
    model: str
    path: str
    batch: int
    shapes: dict[str, list[int]]
    seconds: list[float]  # per timed round
    latency: Latency
    ratio: Ratio | None  # to the baseline (None for the baseline itself)
    memory: MemoryUse | None = None

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.batch / self.latency.median

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "path": self.path, "batch": self.batch,
                "shapes": self.shapes, "latency_s": asdict(self.latency),
                "throughput_per_s": self.throughput,
                "ratio_to_baseline": asdict(self.ratio) if self.ratio else None,
                "memory": self.memory.to_dict() if self.memory else None,
                "seconds": self.seconds}


@dataclass
class BenchReport:
    engine: str
    runtime: str  # the engine and its version, as its runner describes itself
    device: str
    threads: int | None
    batches: list[int]
    warmup: int
    rounds: int | None
    seconds_budget: float | None
    baseline: str
    results: list[BenchResult] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)

    def for_batch(self, batch: int) -> list[BenchResult]:
        return [r for r in self.results if r.batch == batch]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "unfold.bench/1", "engine": self.engine, "runtime": self.runtime,
                "device": self.device, "threads": self.threads, "batches": self.batches,
                "warmup": self.warmup, "rounds": self.rounds,
                "seconds_budget": self.seconds_budget, "baseline": self.baseline,
                "environment": self.environment,
                "results": [r.to_dict() for r in self.results]}


def model_names(paths: Sequence[Path]) -> list[str]:
    """Each model's name: its file's stem, with its folder where two stems are the same."""
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise UnfoldError(f"models given twice: {', '.join(str(p) for p in paths)}")
    return names


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(engine: str, device: str) -> dict[str, str]:
    import onnx

    from unfold import __version__

    env = {"unfold": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
           "onnx": onnx.__version__, "platform": platform.platform(), "cpu": cpu_name(),
           "cpus_available": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else os.cpu_count())}
    if device == "cuda":
        import torch

        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def check_bench_options(*, engine: str, batches: Sequence[int], threads: int | None,
                        rounds: int | None, seconds: float | None, warmup: int,
                        seed: int = 0, device: str = "cpu") -> None:
    """Everything checkable before a model loads."""
    check_seed(seed)
    check_device(device)
    check_engine(engine)
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence) or not batches \
            or not all(_is_count(b, 1) for b in batches):
        raise UnfoldError(f"{option('batches', batches)}: batch sizes are positive integers, "
                          f"e.g. {option('batches', [1, 8])}")
    for parameter, value, least, why in (
            ("threads", threads, 1, "must be at least 1"),
            ("rounds", rounds, 2, "at least 2 (a ratio's interval needs rounds)"),
            ("warmup", warmup, 0, "must be 0 or more")):
        if value is not None and not _is_count(value, least):
            raise UnfoldError(f"{option(parameter, value)}: {why}")
    if rounds is not None and seconds is not None:
        raise UnfoldError(f"give {option('rounds')} or {option('seconds')}, not both")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(
            seconds, (int, float)) or not seconds > 0):
        raise UnfoldError(f"{option('seconds', seconds)}: must be a positive number")


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def bench(models: Sequence[str | Path | Any], *, engine: str = "ort",
          batches: Sequence[int] = (1,),
          threads: int | None = None, rounds: int | None = None, seconds: float | None = None,
          warmup: int = 3, baseline: str | None = None, inputs: Inputs | None = None,
          device: str = "cpu", compile: bool = False, memory: bool = True, seed: int = 0,
          trust: bool = False, arch: str | None = None,
          arch_kwargs: Mapping[str, Any] | None = None, swap: str | None = None,
          progress: Progress | None = None) -> BenchReport:
    """Time `models` on `engine` at each batch size (see the module's docstring). Without
    `rounds` or `seconds`: 100 rounds. `baseline` names the model the ratios are to (default:
    the first); `threads` defaults to the CPUs this process may use."""
    if rounds is None and seconds is None:
        rounds = 100
    check_bench_options(engine=engine, batches=batches, threads=threads, rounds=rounds,
                        seconds=seconds, warmup=warmup, seed=seed, device=device)
    inputs = Inputs() if inputs is None else inputs
    check_inputs(inputs)
    check_swap(swap)
    # (a model in memory: torch only then, as the caller has it loaded anyway)
    held = {} if isinstance(models, (str, os.PathLike)) else \
        {i: m for i, m in enumerate(models) if not isinstance(m, (str, os.PathLike))}
    if held:
        from unfold.load.model_file import is_model_object
    if isinstance(models, (str, os.PathLike)) or \
            not all(is_model_object(m) for m in held.values()):
        raise UnfoldError(f"{option('models', models)}: expected a list of model files (or, "
                          f"for the torch engine, modules), e.g. "
                          f"{option('models', ['un.onnx', 'none.onnx'])}")
    if held and engine != "torch":
        raise UnfoldError(f"a {type(next(iter(held.values()))).__name__} in "
                          f"{option('models')}: a model in memory runs on "
                          f"{option('engine', 'torch')} only (export it for {engine}: "
                          f"unfold.convert)")
    classes = [type(m).__name__ for m in held.values()]
    paths = [Path(f"{type(m).__name__}" + (f"-{i + 1}" if classes.count(type(m).__name__) > 1
                                           else "") + ".in-memory")
             if i in held else Path(m) for i, m in enumerate(models)]
    if not paths:
        raise UnfoldError("no model to bench: give one or more model files")
    for i, path in enumerate(paths):
        if i not in held and not path.is_file():
            raise UnfoldError(f"{path}: no such file")
    names = model_names(paths)
    baseline = baseline or names[0]
    if baseline not in names:
        raise UnfoldError(f"{option('baseline', baseline)}: not one of the models: "
                          f"{', '.join(names)}")
    if threads is None and device == "cpu":
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
    with contextlib.ExitStack() as kept:  # the callers' modules as they were, afterwards
        targets: dict[str, Target] = {}
        for i, (name, path) in enumerate(zip(names, paths, strict=True)):
            if i in held:
                from unfold.load.model_file import held_model

                loaded = kept.enter_context(held_model(held[i], device=device))
                targets[name] = Target(loaded.source, engine, loaded, held=True)
            else:
                targets[name] = load_target(path, engine, trust=trust, arch=arch,
                                            arch_kwargs=arch_kwargs, swap=swap)
        report = _timed(targets, engine, device, threads, batches, warmup, rounds, seconds,
                        baseline, compile, seed, inputs, progress)
    if memory:
        for result in report.results:
            if targets[result.model].held:
                continue  # (a child process cannot load what only this one holds)
            result.memory = measure_in_child({
                "model": result.path, "engine": engine, "batch": result.batch,
                "threads": threads, "device": device, "compile": compile, "seed": seed,
                "trust": trust, "arch": arch,
                "arch_kwargs": dict(arch_kwargs) if arch_kwargs is not None else None,
                "swap": swap,
                "inputs": inputs.to_json()})
    return report


def _timed(targets: dict[str, Target], engine: str, device: str, threads: int | None,
           batches: Sequence[int], warmup: int, rounds: int | None, seconds: float | None,
           baseline: str, compile: bool, seed: int, inputs: Inputs,
           progress: Progress | None) -> BenchReport:
    report = BenchReport(engine, "", device, threads, list(batches), warmup, rounds, seconds,
                         baseline, environment=_environment(engine, device))
    for batch in batches:
        prepared = {n: t.prepare(batch, threads=threads, device=device, compile=compile,
                                 seed=seed, inputs=inputs) for n, t in targets.items()}
        report.runtime = next(iter(prepared.values()))[0].description
        runs = {n: functools.partial(runner.run, feeds) for n, (runner, feeds) in
                prepared.items()}
        on_round = None
        if progress is not None:
            def on_round(done: int, batch: int = batch, report_to: Progress = progress) -> None:
                report_to(batch, done, rounds)
        times = interleaved(runs, rounds=rounds, seconds=seconds, warmup=warmup,
                            on_round=on_round)
        for name, (_, feeds) in prepared.items():
            ratio = None if name == baseline else ratio_interval(times[name], times[baseline])
            report.results.append(BenchResult(
                name, str(targets[name].path), batch,
                {k: list(v.shape) for k, v in feeds.items()}, times[name],
                Latency.of(times[name]), ratio))
        del prepared, runs
    return report
