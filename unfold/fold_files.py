"""`fold_file`: an ONNX file in, its folded model out, verified before it is written (what
`unfold fold` runs; `convert` does the same from a torch model, against torch).

    report = unfold.fold_file("model.onnx", "folded.onnx")
    report.outcome  # written | mismatch | norms left

The fold engine has many transfer functions; a defect in one must never reach a user as a
wrong model. So, unless told not to, the input and the folded model both run in ONNX Runtime
on the same batches (random ones from the input specs, and the user's real inputs), every
output is compared with fp32 tolerances, and only a folded model that matches is written. The
reference runs first and lets go of its weights before the fold starts, and the candidate runs
from the very files that will be published, so memory stays near the weights' size and what
was checked is what is written. Imports neither torch nor anything that does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from unfold.errors import UnfoldError, check_paths, option
from unfold.fold.coverage import whole_model_reason
from unfold.fold.model import check_fold_options
from unfold.fold.report import FoldReport
from unfold.inputs import Inputs, InputSpec, check_inputs, check_seed, load_npz, onnx_input_specs
from unfold.model_parts import graph_problem
from unfold.numerics import stream_bound
from unfold.onnx_files import (
    PROTOBUF_LIMIT,
    check_not_read,
    check_output_path,
    load_onnx_parts,
    staged_onnx,
)
from unfold.precision.checked import check_half, half_of, precision_batches
from unfold.precision.half import HalfReport, check_precision
from unfold.verification import REAL_INPUTS, VerifyReport, make_batches, run_verification
from unfold.verification.tolerances import Tolerances, check_tolerances, default_tolerance

Progress = Callable[[str], None]



class Outcome(str, Enum):
    """How a checked write ended (`fold_file`'s, and `convert`'s)."""
    WRITTEN = "written"  # verified (or verify=False) and written
    MISMATCH = "mismatch"  # the folded model does not compute what the reference does
    NORMS_LEFT = "norms left"  # strict, and a normalization stayed: nothing written


@dataclass
class FoldFileReport:
    source: str
    fold: FoldReport
    verification: VerifyReport | None  # None with verify=False
    inputs: list[InputSpec] = field(default_factory=list)  # what verification ran at
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    written: Path | None = None
    # with a precision: the half graph's conversion, and its check against the input model
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
        return self.written is not None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "fold": self.fold.to_dict(),
                "inputs": [s.describe() for s in self.inputs],
                "verification": (self.verification.to_dict()
                                 if self.verification is not None else None),
                "verified": self.verification is not None and bool(self.verification),
                "seconds": self.seconds, "notes": self.notes,
                "written": str(self.written) if self.written else None,
                "outcome": self.outcome.value,
                "precision": self.precision.to_dict() if self.precision else None,
                "precision_verification": (self.precision_verification.to_dict()
                                           if self.precision_verification is not None
                                           else None)}


class _Recorded:
    """The input model's outputs, batch by batch, computed before the fold (its session, and
    its copy of the weights, gone by then): a Runner that replays them in order."""

    def __init__(self, description: str, input_names: list[str], output_names: list[str],
                 outputs: list[dict[str, np.ndarray]]) -> None:
        self.description, self.input_names, self.output_names = \
            description, input_names, output_names
        self.outputs = outputs
        self._outputs = iter(outputs)

    def replay(self, labels: Sequence[str], of: Sequence[str]) -> _Recorded:
        """The outputs of the batches `labels` again, in that order (`of`: the labels of the
        batches recorded, in order)."""
        by_label = dict(zip(of, self.outputs, strict=True))
        return _Recorded(self.description, self.input_names, self.output_names,
                         [by_label[label] for label in labels])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return next(self._outputs)


# The check's default tolerance, relative to each float output's scale. Two fp32 graphs of one
# function round differently: on the shipped digits ViT with N(0, 1) inputs the folded and the
# unfolded model differ by up to 2.5e-5 of the output's scale in ONNX Runtime (its own export
# differs from torch by 4e-6 to 3e-5 on such inputs), so the fp32 default of 1e-5 fails good
# folds. A wrong fold is off by far more: 1.2e-1 (caformer's producer fold), 8e-3 for one
# weight off by 0.1%. `rtol=` tightens it.
FOLD_RTOL = 1e-4


# what verification runs a dynamic dim at when the caller gives no shape: the first dim (a
# batch) at 2 (make_batches adds 1 and 5), any other (a sequence length) at 8
DEFAULT_BATCH, DEFAULT_DIM = 2, 8


def _verification_specs(skeleton: onnx.ModelProto,
                        inputs: Inputs) -> tuple[list[InputSpec], str | None]:
    """The input specs to verify at, and a note where dynamic dims got sizes the caller did
    not give (they are set on a copy of the model's inputs)."""
    interface = onnx.ModelProto()
    interface.graph.input.extend(skeleton.graph.input)
    if inputs.shapes or inputs.npz is not None:
        return onnx_input_specs(interface, inputs), None
    chosen: dict[str, int] = {}
    for value in interface.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value"):
                name = dim.dim_param or f"{value.name}[{axis}]"
                chosen.setdefault(name, DEFAULT_DIM)
                dim.Clear()
                dim.dim_value = chosen[name]
    specs = onnx_input_specs(interface, inputs, batch=DEFAULT_BATCH)
    sized = [f"{name}={size}" for name, size in chosen.items()]
    if any(spec.dynamic for spec in specs):
        sized.insert(0, f"batch={DEFAULT_BATCH} (and 1, {DEFAULT_BATCH + 3})")
    return specs, (f"verified with dynamic dims at {', '.join(sized)}; give "
                   f"{option('inputs.shapes', '...')} or {option('inputs.npz', '...')} for "
                   f"others") if sized else None


def fold_file(model: str | Path, out: str | Path, *, skip: Sequence[str] = (),
              max_scale: float | None = None, strict: bool = False, force: bool = False,
              verify: bool = True, inputs: Inputs | None = None, atol: Tolerances = None,
              rtol: Tolerances = None, seed: int = 0, precision: str | None = None,
              progress: Progress | None = None) -> FoldFileReport:
    """Fold every offline norm of the ONNX file `model`, check the result against it in ONNX
    Runtime (unless `verify=False`), and only then write `out` (with `strict`, only if no
    normalization is left). `report.outcome` says which; nothing is written otherwise.

    inputs: shapes, dtypes, ranges or real inputs (`npz`) for inputs with dynamic dims
    atol, rtol: tolerances (a float, or by output name); fp32 defaults otherwise
    skip, max_scale: as for `unfold.fold.fold_model`
    precision: "fp16" or "bf16": write the folded graph in that type (`unfold.precision.half`),
        checked against the input model with that type's tolerances on a CPU engine that runs
        it (ONNX Runtime for fp16, OpenVINO for bf16), after the fp32 fold's own check; fp16
        bounds the stream as --fp16 does (max_scale 64) unless max_scale is given"""
    from unfold.engines import runner_for
    from unfold.fold import fold_parts

    check_paths(model=model, out=out)
    check_fold_options(skip, max_scale)
    if precision is not None:
        check_precision(precision)
        max_scale = stream_bound(max_scale, precision == "fp16")
    check_seed(seed)
    inputs = Inputs() if inputs is None else inputs
    check_inputs(inputs)
    check_tolerances(atol, rtol)
    model, out = Path(model), Path(out)
    target = check_output_path(out, force=force, inputs=(model,))
    say = progress or (lambda message: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal start
        seconds[stage] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()

    batches: list[tuple[str, dict[str, np.ndarray]]] = []
    specs: list[InputSpec] = []
    notes: list[str] = []
    recorded: _Recorded | None = None
    first_outputs: dict[str, np.ndarray] = {}
    verified_by_default = verify
    say(f"loading {model} ...")
    parts = load_onnx_parts(model)
    check_not_read(target, parts.sources)  # (its external data, whatever `force` says)
    problem = graph_problem(parts)  # (fold_parts says it too: here before the reference runs)
    if problem is not None:
        raise UnfoldError(f"{model}: {problem}")
    untouched = whole_model_reason(parts)
    if untouched is not None and verify and precision is None:  # the fold leaves it as it is
        verify = False
        notes.append(f"not verified: the fold leaves this model as it is ({untouched})")
    external_data = len(parts.sources) > 1  # (the model file and its data files)
    lap("load")
    if verify:
        specs, sized = _verification_specs(parts.skeleton, inputs)
        notes += [sized] if sized else []
        user = None
        if inputs.npz is not None:
            user = (f"{REAL_INPUTS} {Path(inputs.npz).name}", load_npz(inputs.npz, specs))
        batches = make_batches(specs, seed=seed, user=user)
        say(f"running {model} on {len(batches)} batches (the reference) ...")
        reference = runner_for(model, "ort")  # from the file: its external data as it lies
        try:
            outputs = [reference.run(f) for _, f in batches]
        except UnfoldError as exc:
            if not sized:
                raise
            raise UnfoldError(f"{model} does not run at the sizes chosen for its dynamic dims "
                              f"({sized.split(';')[0].removeprefix('verified with ')}): give "
                              f"the shapes to verify at with "
                              f"{option('inputs.shapes', '...')} ({exc})") from None
        recorded = _Recorded(reference.description, reference.input_names,
                             reference.output_names, outputs)
        first_outputs = outputs[0] if outputs else {}
        del reference, outputs
        lap("reference")
    say("folding offline normalizations ...")
    folded, fold_report = fold_parts(parts, skip=skip, max_scale=max_scale)
    lap("fold")
    report = FoldFileReport(str(model), fold_report, None, specs, seconds, notes)
    if not verified_by_default:
        report.notes.append(f"{option('verify', False)}: the folded model was NOT checked "
                            f"against {model.name}")
    if strict and not fold_report:
        return report
    with staged_onnx(folded, target) as staged:
        if precision is None:
            del folded
        lap("stage")
        if verify:
            assert recorded is not None
            say(f"verifying the folded model against {model.name} ...")
            candidate = runner_for(staged.path, "ort")
            verification = run_verification(recorded, candidate, batches, atol=atol,
                                            rtol=_fold_rtol(rtol, first_outputs))
            del candidate
            if not verification:
                _locate(verification, model, staged.path, batches, external_data)
            report.verification = verification
            lap("verify")
            if not verification:
                return report
        if precision is None:
            report.written = staged.publish(force=force)
    if precision is not None:
        say(f"converting the folded model to {precision} ...")
        feeds = [f for _, f in batches[:2]] if verify else []
        half, report.precision = half_of(folded, precision, feeds=feeds)
        del folded
        lap("precision")
        with staged_onnx(half, target) as staged:
            del half
            if verify:
                assert recorded is not None
                say(f"verifying the {precision} model against {model.name} ...")
                chosen = precision_batches(batches)
                replayed = recorded.replay([label for label, _ in chosen],
                                           of=[label for label, _ in batches])
                report.precision_verification = check_half(
                    replayed, staged.path, precision, chosen, atol=atol, rtol=rtol)
                lap("verify precision")
                if not report.precision_verification:
                    return report
            report.written = staged.publish(force=force)
    lap("write")
    return report


def _fold_rtol(rtol: Tolerances, outputs: Mapping[str, np.ndarray]) -> Tolerances:
    """The caller's rtol, else FOLD_RTOL for each float output (never tighter than its dtype's
    own default: float16's stays 1e-2)."""
    if rtol is not None:
        return rtol
    return {name: max(default_tolerance(value.dtype).rtol, FOLD_RTOL)
            for name, value in outputs.items()
            if np.issubdtype(value.dtype, np.floating)} or None


def _locate(verification: VerifyReport, model: Path, folded: Path,
            batches: Sequence[tuple[str, dict[str, np.ndarray]]], external_data: bool) -> None:
    """Name the first node of the folded model whose output departs from the input's (where
    both fit in memory as protobufs: under 2 GiB, no external data)."""
    from unfold.onnx_files import load_onnx
    from unfold.verification import first_divergence

    failed = verification.failed_batch()
    assert failed is not None
    if external_data or (folded.parent / f"{folded.name}.data").exists() or \
            any(p.stat().st_size >= PROTOBUF_LIMIT for p in (model, folded)):
        verification.notes.append("the first departing node is not located for a model "
                                  "with external data")
        return
    feeds = next(f for label, f in batches if label == failed.label)
    verification.divergence = first_divergence(load_onnx(model), load_onnx(folded), feeds)
