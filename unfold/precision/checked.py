"""A folded model in fp16 or bf16, checked before it is written: what `fold_file` and
`convert` run for `precision=`. It runs models, so it sits beside `unfold.verification`
(engines and verification below it), not beside the graph conversion in `half`.

The half graph is checked against the same reference as the fp32 fold (the input model, or
torch) with the half type's tolerances, on a CPU engine that runs that type: ONNX Runtime for
fp16 (it has fp16 kernels for what a Transformer uses), OpenVINO for bf16 (ONNX Runtime's CPU
provider has almost no bf16 kernels; OpenVINO reads a bf16 ONNX graph as it is)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from unfold.engines import Runner, runner_for
from unfold.model_parts import ModelParts, weight_proto, weightless_model
from unfold.onnx_files import PROTOBUF_LIMIT
from unfold.precision.half import FLOAT, HalfReport, tensor_types, to_half
from unfold.verification import REAL_INPUTS, Batch, VerifyReport, run_verification
from unfold.verification.tolerances import DEFAULT_TOLERANCES, Tolerances

# the CPU engine that runs each half type as it is
HALF_ENGINES = {"fp16": "ort", "bf16": "openvino"}


def _whole_copy(parts: ModelParts) -> onnx.ModelProto:
    """One ModelProto holding a copy of every weight (`parts` is left whole)."""
    model = onnx.ModelProto()
    model.CopyFrom(parts.skeleton)
    model.graph.initializer.extend(weight_proto(name, w) for name, w in parts.weights.items())
    return model


def half_of(folded: ModelParts, precision: str, *,
            feeds: Sequence[Mapping[str, np.ndarray]] = ()) -> tuple[ModelParts, HalfReport]:
    """`folded` in `precision`, its activations measured on `feeds` first (the nodes whose
    tensors the type would not hold stay fp32). `folded` is left as it was."""
    ranges = None
    if feeds:
        model = _whole_copy(folded)
        if model.ByteSize() < PROTOBUF_LIMIT:
            ranges = measured_ranges(model, feeds)
        del model
    return to_half(folded, precision, ranges=ranges)


def measured_ranges(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]]
                    ) -> dict[str, float]:
    """The largest finite |value| of every float tensor `model` computes, over the batches
    `feeds` (inf where a tensor holds no finite value), every tensor ONNX Runtime's output."""
    from unfold.engines.ort import OrtRunner

    types = tensor_types(weightless_model(model))
    produced = [out for node in model.graph.node for out in node.output
                if out and types.get(out) == FLOAT]
    runner = OrtRunner(model, extra_outputs=produced)
    largest: dict[str, float] = {}
    for feed in feeds:
        for name, value in runner.run(dict(feed)).items():
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size:
                finite = np.abs(value[np.isfinite(value)])
                top = float(finite.max()) if finite.size else float("inf")
                largest[name] = max(largest.get(name, 0.0), top)
    return largest


def half_runner(model: onnx.ModelProto | Path, precision: str) -> Runner:
    """A CPU engine that runs a `precision` graph as it is."""
    return runner_for(model, HALF_ENGINES[precision])


def half_tolerances(precision: str, output_names: Sequence[str]
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """(atol, rtol) by output for checking a `precision` graph against its fp32 model: the
    half type's defaults (`verification.tolerances`), though the outputs are declared fp32."""
    tolerance = DEFAULT_TOLERANCES["float16" if precision == "fp16" else "bfloat16"]
    return ({n: tolerance.atol for n in output_names}, {n: tolerance.rtol for n in output_names})


def precision_batches(batches: Sequence[Batch]) -> list[Batch]:
    """The batches a half graph is checked on: the caller's real inputs where they are among
    `batches`, else all of them. Random inputs from the specs can lie far outside what the
    model was trained on, where rounding the input alone moves the output (the shipped digits
    ViT on N(0, 1) images: 5 of its output scale 23 from rounding the input to bf16, none of
    it the conversion's), so next to real inputs they say nothing of the model's precision."""
    return [batch for batch in batches if batch[0].startswith(REAL_INPUTS)] or list(batches)


def check_half(reference, candidate: onnx.ModelProto | Path, precision: str,
               batches: Sequence[Batch], *,
               atol: Tolerances = None, rtol: Tolerances = None) -> VerifyReport:
    """`candidate` (a `precision` graph) against `reference` (a Runner) on `batches` (from
    `precision_batches`), with the half type's tolerances where `atol` / `rtol` are not
    given."""
    runner = half_runner(candidate, precision)
    default_atol, default_rtol = half_tolerances(precision, runner.output_names)
    report = run_verification(reference, runner, batches,
                            atol=default_atol if atol is None else atol,
                            rtol=default_rtol if rtol is None else rtol)
    if any(label.startswith(REAL_INPUTS) for label, _ in batches):
        report.notes.append("checked on the real inputs only (random ones need not be like "
                            "the data)")
    elif not report:
        report.notes.append("checked on random inputs from the input specs, which can lie far "
                            "from the data the model was trained on: give real inputs "
                            "(--inputs real.npz) to check the precision where it matters")
    return report
