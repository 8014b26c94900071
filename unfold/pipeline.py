"""The whole job, as the Python API (`unfold.convert`, `unfold.verify`) and the CLI call it:

    model.pt ─load─▶ torch model ─export─▶ ONNX ─fold─▶ ONNX without norms ─verify─▶ written

`convert` writes only after verification passed: a failed check, an error or Ctrl-C leaves
no file behind and never overwrites one without `force`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from unfold.engines import (
    Runner,
    check_device,
    check_engine,
    check_precision_runs,
    check_runs,
    is_onnx_file,
    runner_for,
)
from unfold.errors import UnfoldError, check_paths, option
from unfold.fold import FoldReport, fold_model
from unfold.fold.model import check_fold_options
from unfold.fold_files import Outcome
from unfold.inputs import (
    Inputs,
    InputSpec,
    check_inputs,
    check_seed,
    load_npz,
    onnx_input_specs,
)
from unfold.load import LoadedModel, load_model
from unfold.load.arch import check_arch_kwargs
from unfold.load.model_file import held_model, is_model_object
from unfold.model_parts import ModelParts
from unfold.norm_kinds import check_swap
from unfold.numerics import stream_bound
from unfold.onnx_files import check_output_path, load_onnx, save_onnx_atomic
from unfold.precision.checked import check_half, half_of, half_tolerances, precision_batches
from unfold.precision.half import (
    HalfReport,
    check_precision,
    graph_half_type,
)
from unfold.verification import (
    REAL_INPUTS,
    VerifyReport,
    first_divergence,
    make_batches,
    run_verification,
)
from unfold.verification.tolerances import Tolerances, check_tolerances

Progress = Callable[[str], None]


@dataclass
class ConvertReport:
    source: str
    format: str
    inputs: list[InputSpec]
    exporter: str
    fallback_reason: str | None
    opset: int
    fold: FoldReport
    verification: VerifyReport | None  # None with verify=False
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    notes: list[str] = field(default_factory=list)
    written: Path | None = None
    # with a precision: the half graph's conversion, and its check against torch
    precision: HalfReport | None = None
    precision_verification: VerifyReport | None = None

    @property
    def outcome(self) -> Outcome:
        if self.written is not None:
            return Outcome.WRITTEN
        if any(v is not None and not v for v in (self.verification,
                                                   self.precision_verification)):
            return Outcome.MISMATCH
        return Outcome.NORMS_LEFT

    def __bool__(self) -> bool:
        """True when the output was written (verification passed, or was skipped)."""
        return self.outcome is Outcome.WRITTEN

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "format": self.format,
            "inputs": [s.describe() for s in self.inputs],
            "exporter": self.exporter, "fallback_reason": self.fallback_reason,
            "opset": self.opset, "fold": self.fold.to_dict(),
            "verification": (self.verification.to_dict() if self.verification is not None
                             else None),
            "verified": self.verification is not None and bool(self.verification),
            "seconds": self.seconds, "notes": self.notes,
            "written": str(self.written) if self.written else None,
            "outcome": self.outcome.value,
            "precision": self.precision.to_dict() if self.precision else None,
            "precision_verification": (self.precision_verification.to_dict()
                                       if self.precision_verification is not None else None),
        }


class _Stages:
    def __init__(self, progress: Progress | None) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress or (lambda message: None)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        self.progress(f"{message} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.progress(f"{message} done in {self.seconds[name]:.1f}s")


def _check_options(inputs: Inputs | None, atol: Tolerances, rtol: Tolerances,
                   arch_kwargs: Mapping[str, Any] | None, seed: Any,
                   paths: Mapping[str, Any]) -> Inputs:
    """What can be checked before any work is: so a mistake costs nothing."""
    check_paths(**paths)
    check_seed(seed)
    inputs = Inputs() if inputs is None else inputs
    check_inputs(inputs)
    check_tolerances(atol, rtol)
    check_arch_kwargs(arch_kwargs)
    return inputs


def _check_choice(parameter: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UnfoldError(f"{option(parameter, value)}: valid: {', '.join(valid)}")


def _real_inputs(inputs: Inputs, specs: Sequence[InputSpec]
                 ) -> tuple[str, dict[str, np.ndarray]] | None:
    """The caller's own inputs as a verification batch, if given."""
    if inputs.npz is None:
        return None
    return f"{REAL_INPUTS} {Path(inputs.npz).name}", load_npz(inputs.npz, specs)


def _held(model: Any, arch: str | None, arch_kwargs: Mapping[str, Any] | None, trust: bool,
          swap: str | None) -> bool:
    """Whether `model` is the model itself (a module or program) rather than a file; the
    options that only a file takes are refused for it."""
    check_swap(swap)
    held = is_model_object(model)
    if held and (arch is not None or arch_kwargs is not None or trust or swap):
        raise UnfoldError(f"{option('arch')}, {option('arch_kwargs')}, {option('swap')} and "
                          f"{option('trust')} are for model files: a {type(model).__name__} is "
                          f"the model itself")
    return held


def convert(model: str | Path | Any, out: str | Path, *, arch: str | None = None,
            arch_kwargs: Mapping[str, Any] | None = None, trust: bool = False,
            swap: str | None = None,
            inputs: Inputs | None = None, exporter: str = "auto",
            opset: int | None = None, verify: bool = True, atol: Tolerances = None,
            rtol: Tolerances = None, skip: Sequence[str] = (), force: bool = False,
            strict: bool = False, seed: int = 0, max_scale: float | None = None,
            precision: str | None = None, progress: Progress | None = None) -> ConvertReport:
    """Load, export, fold, verify against torch, and only then write `out` (with `strict`,
    only if no normalization is left). `report.outcome` says which.

    model: a model file (any format `unfold convert` reads), or the model itself: a
        `torch.nn.Module` (a training script's; its train/eval modes are put back after, its
        parameters are not touched) or a `torch.export.ExportedProgram`

    swap: for weights given with `arch`: the offline norm ("un", "pn", "pn*") the model was
        trained with where the factory builds LayerNorms (unfold.nn.swap_norms after building)
    inputs: what the model takes, where it does not say itself (`unfold.Inputs`)
    atol, rtol: for every output (a float), or by output name (a mapping); see
        unfold.verification.tolerances
    skip: fold rules not to use (`unfold rules` lists them)
    max_scale: refuse folds whose weights would grow by more than this (e.g. for fp16)
    precision: "fp16" or "bf16": write the folded graph in that type (`unfold.precision`),
        checked against torch with that type's tolerances (after the fp32 fold's check); fp16
        bounds the stream as --fp16 does (max_scale 64) unless max_scale is given"""
    from unfold.export import EXPORTERS

    if not isinstance(model, (str, os.PathLike)) and not is_model_object(model):
        raise UnfoldError(f"model: expected a model file path (str or pathlib.Path), a "
                          f"torch.nn.Module or a torch.export.ExportedProgram, not a "
                          f"{type(model).__name__}")
    inputs = _check_options(inputs, atol, rtol, arch_kwargs, seed, {"out": out})
    in_memory = _held(model, arch, arch_kwargs, trust, swap)
    _check_choice("exporter", exporter, list(EXPORTERS))
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)
                              or opset < 1):
        raise UnfoldError(f"{option('opset', opset)}: must be a positive ONNX opset version")
    check_fold_options(skip, max_scale)
    if precision is not None:
        check_precision(precision)
        max_scale = stream_bound(max_scale, precision == "fp16")
    target = check_output_path(out, force=force, inputs=() if in_memory else (Path(model),))
    stages = _Stages(progress)
    if in_memory:
        with held_model(model) as loaded:
            return _convert_loaded(loaded, target, stages, inputs, exporter, opset, verify,
                                   atol, rtol, skip, force, strict, seed, max_scale, precision)
    with stages.stage("load", f"loading {model}"):
        loaded = load_model(model, arch=arch, arch_kwargs=arch_kwargs, trust=trust, swap=swap)
    return _convert_loaded(loaded, target, stages, inputs, exporter, opset, verify, atol, rtol,
                           skip, force, strict, seed, max_scale, precision)


def _convert_loaded(loaded: LoadedModel, target: Path, stages: _Stages, inputs: Inputs,
                    exporter: str, opset: int | None, verify: bool, atol: Tolerances,
                    rtol: Tolerances, skip: Sequence[str], force: bool, strict: bool, seed: int,
                    max_scale: float | None, precision: str | None) -> ConvertReport:
    from unfold.export import export_onnx

    specs = loaded.resolve_specs(inputs)
    user = _real_inputs(inputs, specs)
    with stages.stage("export", "exporting to ONNX"):
        exported = export_onnx(loaded, specs, exporter=exporter, opset=opset)
    with stages.stage("fold", "folding offline normalizations"):
        folded, fold_report = fold_model(exported.model, skip=skip, max_scale=max_scale)
    report = ConvertReport(str(loaded.source), loaded.format, specs, exported.exporter,
                           exported.fallback_reason, exported.opset, fold_report, None,
                           stages.seconds, list(loaded.notes))
    if not fold_report.sites:
        online = ", ".join(sorted({n.kind for n in fold_report.online}))
        report.notes.append("no offline normalization found: nothing to fold"
                            + (f" (online norms stay: {online})" if online else ""))
    if verify:
        with stages.stage("verify", "verifying against torch"):
            reference = runner_for(loaded, "torch", output_names=exported.output_names)
            batches = make_batches(specs, seed=seed, example=loaded.example_inputs, user=user)
            verification = run_verification(reference, runner_for(folded, "ort"), batches,
                                            atol=None if precision else atol,
                                            rtol=None if precision else rtol)
            if not verification:
                _diagnose(verification, reference, exported.model, folded, batches)
        report.verification = verification
        if not verification:
            return report
    if precision is not None:
        with stages.stage("precision", f"converting the folded model to {precision}"):
            feeds = [f for _, f in batches[:2]] if verify else []
            half, report.precision = half_of(ModelParts.viewing(folded), precision,
                                             feeds=feeds)
            folded = half.to_model()
        if verify:
            with stages.stage("verify precision", f"verifying the {precision} model against "
                                                  f"torch"):
                report.precision_verification = check_half(
                    reference, folded, precision, precision_batches(batches), atol=atol,
                    rtol=rtol)
            if not report.precision_verification:
                return report
    if not verify:
        report.notes.append(f"{option('verify', False)}: the result was NOT checked against "
                            f"torch")
    if strict and not fold_report:
        return report
    with stages.stage("write", f"writing {target}"):
        report.written = save_onnx_atomic(folded, target, force=force)
    return report


def _diagnose(verification: VerifyReport, reference: Runner, exported: onnx.ModelProto,
              folded: onnx.ModelProto, batches: Sequence[tuple[str, dict]]) -> None:
    """Which stage departs from torch, and where in the graph."""
    failed = verification.failed_batch()
    assert failed is not None
    feeds = next(f for label, f in batches if label == failed.label)
    before_fold = run_verification(reference, runner_for(exported, "ort"),
                                   [(failed.label, feeds)],
                                   tolerances={o.name: o.tolerance for o in failed.outputs})
    if before_fold:
        verification.notes.append("the export matches torch; the fold departs")
        verification.divergence = first_divergence(exported, folded, feeds)
    else:
        worst = max(before_fold.worst(), key=lambda c: c.max_abs)
        verification.notes.append(
            f"the exported ONNX already departs from torch before folding ({worst.name}: max "
            f"abs error {worst.max_abs:.3g}): an exporter problem, try "
            f"{option('exporter', 'torchscript')}")


PLAN_SUFFIXES = (".plan", ".engine")  # what `unfold build` writes (TensorRT's own names)


def verify(reference: str | Path | Any, candidate: str | Path, *, engine: str = "ort",
           device: str = "cpu", arch: str | None = None,
           arch_kwargs: Mapping[str, Any] | None = None, trust: bool = False,
           swap: str | None = None,
           inputs: Inputs | None = None, atol: Tolerances = None, rtol: Tolerances = None,
           seed: int = 0, progress: Progress | None = None) -> VerifyReport:
    """Run REFERENCE (model.pt on torch, or an .onnx on ONNX Runtime) and CANDIDATE (an
    .onnx on `engine`, a TensorRT engine built by `unfold build` (.plan, .engine) with
    `engine="trt"`, or a model.pt on torch) on the same inputs and compare every output.
    `inputs`, `atol`, `rtol`, `arch`, `arch_kwargs`, `swap` as for `convert`; `bool(report)` is the
    verdict. The reference may also be the model itself, as for `convert` (a module's modes
    are put back after; on a GPU `device` a copy of it runs)."""
    check_engine(engine)
    check_device(device)
    in_memory = _held(reference, arch, arch_kwargs, trust, swap)
    inputs = _check_options(inputs, atol, rtol, arch_kwargs, seed,
                            {"candidate": candidate} if in_memory else
                            {"reference": reference, "candidate": candidate})
    if not in_memory:
        return _verify(Path(reference), None, Path(candidate), engine, device, arch,
                       arch_kwargs, trust, swap, inputs, atol, rtol, seed, progress)
    with held_model(reference, device=device) as held:
        return _verify(held.source, held, Path(candidate), engine, device, arch, arch_kwargs,
                       trust, swap, inputs, atol, rtol, seed, progress)


def _verify(reference: Path, held: LoadedModel | None, candidate: Path, engine: str,
            device: str, arch: str | None, arch_kwargs: Mapping[str, Any] | None, trust: bool,
            swap: str | None, inputs: Inputs, atol: Tolerances, rtol: Tolerances, seed: int,
            progress: Progress | None) -> VerifyReport:
    stages = _Stages(progress)
    example: dict[str, np.ndarray] = {}
    with stages.stage("load", f"loading {reference} and {candidate}"):
        candidate_plan = candidate.suffix.lower() in PLAN_SUFFIXES
        if candidate_plan:
            if engine != "trt":
                raise UnfoldError(f"{candidate} is a TensorRT engine: verify it with "
                                  f"{option('engine', 'trt')}")
            from unfold.engines.trt import require_tensorrt

            require_tensorrt()  # (before the reference loads: a missing engine costs nothing)
            if not candidate.is_file():
                raise UnfoldError(f"{candidate}: no such file")
        candidate_onnx = load_onnx(candidate) if is_onnx_file(candidate) else None
        half = graph_half_type(candidate_onnx) if candidate_onnx is not None else None
        # (before the reference loads: a graph the engine cannot run costs nothing)
        check_precision_runs(engine, device, half, candidate, doing="verify")
        # (a model.pt candidate with the default engine runs on torch)
        if not candidate_plan and not (candidate_onnx is None and engine == "ort"):
            check_runs(engine, candidate, is_onnx=candidate_onnx is not None)
        # (before the reference loads: a missing engine costs nothing)
        if engine == "openvino":
            from unfold.engines.openvino import require_openvino

            require_openvino()
        output_names = [o.name for o in candidate_onnx.graph.output] if candidate_onnx else []
        plan_runner = None
        if candidate_plan:
            plan_runner = runner_for(candidate.read_bytes(), "trt")
            output_names = plan_runner.output_names
        reference_onnx = None
        if held is None and is_onnx_file(reference):
            reference_onnx = load_onnx(reference)
            ref_runner = runner_for(reference_onnx, "ort", device=device)
            specs = onnx_input_specs(reference_onnx, inputs)
        else:
            loaded = held or load_model(reference, arch=arch, arch_kwargs=arch_kwargs,
                                        trust=trust, swap=swap)
            specs = loaded.resolve_specs(inputs)
            ref_runner = runner_for(loaded, "torch", device=device, output_names=output_names)
            example = loaded.example_inputs
        cand_runner: Runner
        if plan_runner is not None:
            cand_runner = plan_runner
        elif candidate_onnx is None:
            other = load_model(candidate, arch=arch, arch_kwargs=arch_kwargs, trust=trust,
                               swap=swap)
            other.use_inputs([spec.name for spec in specs])
            cand_runner = runner_for(other, "torch", device=device)
        else:
            cand_runner = runner_for(candidate_onnx, engine, device=device, specs=specs)
        user = _real_inputs(inputs, specs)
    with stages.stage("verify", "comparing outputs"):
        batches = make_batches(specs, seed=seed, example=example, user=user)
        given_atol, given_rtol = atol, rtol
        if half is not None:  # (a graph --precision wrote: its type's tolerances, real inputs)
            batches = precision_batches(batches)
            default_atol, default_rtol = half_tolerances(half, cand_runner.output_names)
            atol = default_atol if atol is None else atol
            rtol = default_rtol if rtol is None else rtol
        report = run_verification(ref_runner, cand_runner, batches, atol=atol, rtol=rtol)
        if half is not None and (given_atol is None or given_rtol is None):
            report.notes.append(f"{candidate.name} computes in {half}: checked with {half}'s "
                                f"tolerances where none were given"
                                + (", on the real inputs only" if user else ""))
        elif half is not None and user:
            report.notes.append(f"{candidate.name} computes in {half}: checked on the real "
                                f"inputs only")
        failed = report.failed_batch()
        if failed is not None and reference_onnx is not None and candidate_onnx is not None:
            feeds = next(f for label, f in batches if label == failed.label)
            report.divergence = first_divergence(reference_onnx, candidate_onnx, feeds)
    return report
