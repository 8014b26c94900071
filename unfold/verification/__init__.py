"""Running a reference and a candidate on the same inputs and comparing every output, with
explicit tolerances (package named `verification` so that `unfold.verify` stays the function
the API promises).

    batches = make_batches(specs, example=loaded.example_inputs)
    report = run_verification(TorchRunner(...), OrtRunner(folded), batches)
    bool(report), report.worst()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unfold.engines import Runner
from unfold.errors import ExitCode, UnfoldError
from unfold.inputs import InputSpec, random_batch
from unfold.verification.compare import OutputComparison, compare_outputs
from unfold.verification.locate import Divergence, first_divergence
from unfold.verification.tolerances import (
    DEFAULT_TOLERANCES,
    Tolerance,
    Tolerances,
    resolve_tolerances,
)

__all__ = ["DEFAULT_TOLERANCES", "REAL_INPUTS", "Batch", "BatchResult", "Divergence",
           "OutputComparison", "Tolerance",
           "VerifyReport", "first_divergence", "make_batches", "run_verification"]

Batch = tuple[str, dict[str, np.ndarray]]
# the label of the caller's own inputs among the batches (`unfold fold/convert --inputs real.npz`)
REAL_INPUTS = "real inputs"


@dataclass
class BatchResult:
    label: str
    shapes: dict[str, tuple[int, ...]]
    outputs: list[OutputComparison]

    def __bool__(self) -> bool:
        return all(self.outputs)


@dataclass
class VerifyReport:
    reference: str  # what ran the reference, e.g. "torch 2.13.0 (cpu)"
    candidate: str
    batches: list[BatchResult]
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)  # e.g. which stage departs

    def __bool__(self) -> bool:
        return bool(self.batches) and all(self.batches)

    def worst(self) -> list[OutputComparison]:
        """Per output, the batch where it came closest to (or went past) its tolerance."""
        worst: dict[str, OutputComparison] = {}
        for batch in self.batches:
            for out in batch.outputs:
                def ratio(c: OutputComparison) -> float:
                    return float("inf") if c.problem else c.max_abs / max(c.allowed, 1e-300)
                if out.name not in worst or ratio(out) > ratio(worst[out.name]):
                    worst[out.name] = out
        return list(worst.values())

    def failed_batch(self) -> BatchResult | None:
        return next((b for b in self.batches if not b), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": bool(self), "reference": self.reference, "candidate": self.candidate,
            "batches": [{"label": b.label, "shapes": {k: list(v) for k, v in b.shapes.items()},
                         "passed": bool(b), "outputs": [o.to_dict() for o in b.outputs]}
                        for b in self.batches],
            "worst": [o.to_dict() for o in self.worst()],
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "notes": self.notes,
        }


def make_batches(specs: Sequence[InputSpec], *, seed: int = 0, count: int = 3,
                 example: Mapping[str, np.ndarray] | None = None,
                 user: Batch | None = None) -> list[Batch]:
    """`count` random batches at the declared shapes; with a dynamic batch axis, also batch
    sizes 1 and declared + 3; with other dynamic axes (sequence lengths), also each of them
    longer by 2 and shorter by 1, which catches a length an exporter baked in as a constant;
    then the model's own example inputs and the user's, if any."""
    rng = np.random.default_rng(seed)
    declared = "x".join(map(str, specs[0].shape)) if specs else ""
    batches: list[Batch] = [(f"random #{i + 1} ({declared})", random_batch(specs, rng))
                            for i in range(count)]
    if specs and all(0 in s.dynamic for s in specs):
        for size in sorted({1, specs[0].shape[0] + 3} - {specs[0].shape[0]}):
            batches.append((f"random, batch {size}", random_batch(specs, rng, batch=size)))
    lengths = {name: spec.shape[axis] for spec in specs for axis, name in spec.dynamic.items()
               if axis > 0}
    for delta in (2, -1):
        sizes = {name: size + delta for name, size in lengths.items() if size + delta >= 1}
        if sizes:
            label = ", ".join(f"{name} {size}" for name, size in sizes.items())
            batches.append((f"random, {label}", random_batch(specs, rng, sizes=sizes)))
    if example:
        batches.append(("the model's example inputs", dict(example)))
    if user:
        batches.append(user)
    return batches


def _align(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
           ) -> dict[str, np.ndarray]:
    """The candidate's outputs under the reference's names (by name, else by position)."""
    if set(candidate) >= set(reference):
        return {name: candidate[name] for name in reference}
    if len(candidate) != len(reference):
        raise UnfoldError(f"the reference has {len(reference)} output(s) "
                          f"({', '.join(reference)}), the candidate {len(candidate)} "
                          f"({', '.join(candidate)})", ExitCode.CHECK_FAILED)
    return dict(zip(reference, candidate.values(), strict=True))


def run_verification(reference: Runner, candidate: Runner, batches: Sequence[Batch], *,
                     atol: Tolerances = None, rtol: Tolerances = None,
                     tolerances: Mapping[str, Tolerance] | None = None) -> VerifyReport:
    report = VerifyReport(reference.description, candidate.description, [])
    for label, feeds in batches:
        expected = reference.run(feeds)
        try:
            got = _align(expected, candidate.run(feeds))
        except UnfoldError as exc:
            raise UnfoldError(f"{candidate.description}, batch \"{label}\": {exc}",
                              ExitCode.CHECK_FAILED) from None
        if tolerances is None:
            tolerances = resolve_tolerances({n: v.dtype for n, v in expected.items()},
                                            atol, rtol)
        report.batches.append(BatchResult(label, {k: v.shape for k, v in feeds.items()},
                                          compare_outputs(expected, got, tolerances)))
    return report
