"""One output against its reference: max abs error, max relative error, cosine similarity,
and whether it is within tolerance. Truthy when it passed, and says the tolerance that would
have been needed when it did not (as polygraphy's OutputCompareResult does)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from unfold.verification.tolerances import Tolerance


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # elementwise |a - b| / |b|, over elements where |b| > 0
    cosine: float
    scale: float  # max |reference|
    tolerance: Tolerance
    problem: str | None = None  # shape or non-finite mismatch: fails whatever the tolerance

    @property
    def allowed(self) -> float:
        return self.tolerance.allowed(self.scale)

    def __bool__(self) -> bool:
        return self.problem is None and self.max_abs <= self.allowed

    @property
    def needed_rtol(self) -> float:
        """The smallest rtol (keeping atol) this output would have passed with."""
        return max(0.0, self.max_abs - self.tolerance.atol) / self.scale if self.scale else \
            float("inf") if self.max_abs > self.tolerance.atol else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "max_abs": self.max_abs,
                "max_rel": self.max_rel, "cosine": self.cosine, "scale": self.scale,
                "atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                "allowed": self.allowed, "passed": bool(self), "problem": self.problem}


def compare_output(name: str, reference: np.ndarray, candidate: np.ndarray,
                   tolerance: Tolerance) -> OutputComparison:
    if reference.shape != candidate.shape:
        return OutputComparison(name, tuple(reference.shape), float("inf"), float("inf"),
                                float("nan"), float("nan"), tolerance,
                                f"shape {tuple(candidate.shape)}, expected "
                                f"{tuple(reference.shape)}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    problem = None
    finite = np.isfinite(ref) & np.isfinite(cand)
    # equal non-finite values (inf == inf, nan and nan) agree; anything else does not
    agree = ~finite & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
    if not np.all(finite | agree):
        count = int(np.sum(~(finite | agree)))
        problem = f"{count} element(s) non-finite on one side only"
    diff = np.abs(ref - cand)[finite]
    ref_f, cand_f = ref[finite], cand[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    nonzero = np.abs(ref_f) > 0
    max_rel = float((diff[nonzero] / np.abs(ref_f[nonzero])).max()) if nonzero.any() else 0.0
    norms = float(np.linalg.norm(ref_f) * np.linalg.norm(cand_f))
    cosine = float(np.dot(ref_f, cand_f) / norms) if norms else float(max_abs == 0.0)
    scale = float(np.abs(ref_f).max()) if ref_f.size else 0.0
    return OutputComparison(name, tuple(reference.shape), max_abs, max_rel, cosine, scale,
                            tolerance, problem)


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                    tolerances: Mapping[str, Tolerance]) -> list[OutputComparison]:
    return [compare_output(name, reference[name], candidate[name], tolerances[name])
            for name in reference]
