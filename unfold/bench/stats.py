"""The statistics of a benchmark (BENCHMARKS.md, "Method"): latency percentiles of one model's
rounds, and the per-round ratio of two models timed in the same interleaved rounds, with a
bootstrap confidence interval on its median. A ratio whose interval holds 1.0 is noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Seconds per run over the timed rounds."""
    median: float
    p10: float
    p90: float
    p99: float
    mean: float
    min: float
    rounds: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        times = np.asarray(seconds, dtype=np.float64)
        if times.size == 0:
            raise ValueError("no rounds timed")
        p10, median, p90, p99 = np.percentile(times, [10, 50, 90, 99])
        return cls(float(median), float(p10), float(p90), float(p99), float(times.mean()),
                   float(times.min()), int(times.size))


@dataclass(frozen=True)
class Ratio:
    """median over rounds of candidate_i / baseline_i, and its bootstrap interval."""
    median: float
    low: float
    high: float
    confidence: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    def describe(self) -> str:
        return f"{self.median:.3f} [{self.low:.3f}, {self.high:.3f}]"


def ratio_interval(candidate: Sequence[float], baseline: Sequence[float], *,
                   confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> Ratio:
    """The per-round ratio candidate_i / baseline_i (round i timed both, one right after the
    other, so drift cancels), its median, and a percentile bootstrap interval of that median
    (rounds resampled with replacement)."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"ratios need the same rounds: {a.size} and {b.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ratios = a / b
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, ratios.size, size=(resamples, ratios.size))
    medians = np.median(ratios[picks], axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return Ratio(float(np.median(ratios)), float(low), float(high), confidence)
