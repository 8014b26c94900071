"""unfold.bench.stats: percentiles, and the per-round ratio's bootstrap interval: it holds the
true ratio, narrows with more rounds, holds 1 for two draws of one distribution, and pairs
rounds (a drift common to both cancels)."""

from __future__ import annotations

import numpy as np
import pytest

from unfold.bench.stats import Latency, ratio_interval

RNG = np.random.default_rng(0)


def test_latency_percentiles() -> None:
    lat = Latency.of(np.arange(1, 101) / 1000)
    assert (lat.rounds, lat.min) == (100, 0.001)
    assert lat.median == pytest.approx(0.0505) and lat.p90 == pytest.approx(0.0901)
    assert lat.p10 < lat.median < lat.p90 < lat.p99
    with pytest.raises(ValueError, match="no rounds"):
        Latency.of([])


def test_the_interval_holds_the_true_ratio_and_narrows_with_rounds() -> None:
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        base = RNG.lognormal(0, 0.1, n)
        return 1.10 * base * RNG.lognormal(0, 0.05, n), base

    few, many = ratio_interval(*draw(20)), ratio_interval(*draw(2000))
    assert few.low <= 1.10 <= few.high and many.low <= 1.10 <= many.high
    assert many.high - many.low < (few.high - few.low) / 3
    assert not many.within_noise and many.describe().count("[") == 1


def test_one_distribution_against_itself_is_within_noise() -> None:
    a, b = RNG.lognormal(0, 0.2, 300), RNG.lognormal(0, 0.2, 300)
    assert ratio_interval(a, b).within_noise


def test_rounds_pair_up_so_a_common_drift_cancels() -> None:
    drift = np.linspace(1, 3, 200)  # the machine slows down threefold during the run
    noise = RNG.lognormal(0, 0.01, (2, 200))
    ratio = ratio_interval(1.05 * drift * noise[0], drift * noise[1])
    assert 1.04 < ratio.low <= ratio.median <= ratio.high < 1.06


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same rounds"):
        ratio_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        ratio_interval([1.0], [1.0], confidence=1.5)
