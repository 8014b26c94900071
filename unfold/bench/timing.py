"""Interleaved timing (BENCHMARKS.md, "Method"): warm-up, then rounds A B C A B C ..., so that
drift and noise (a neighbour process, the CPU's clock) hit every model alike and the per-round
ratios pair up. Rounds stop at a count or after a time budget, whichever is given."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

# a time budget still times at least this many rounds (the ratio's interval needs them)
MIN_ROUNDS = 5


def interleaved(runs: Mapping[str, Callable[[], object]], *, rounds: int | None = None,
                seconds: float | None = None, warmup: int = 3,
                on_round: Callable[[int], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each run, over the same rounds: `warmup` untimed rounds first, then
    `rounds` timed ones, or as many as fit in `seconds` (at least MIN_ROUNDS). `on_round(i)`
    after each timed round (a progress bar)."""
    if (rounds is None) == (seconds is None):
        raise ValueError("give rounds or seconds")
    if rounds is not None and rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    started = clock()
    done = 0
    while True:
        if rounds is not None and done >= rounds:
            break
        if seconds is not None and done >= MIN_ROUNDS and clock() - started >= seconds:
            break
        for name, run in runs.items():
            start = clock()
            run()
            times[name].append(clock() - start)
        done += 1
        if on_round is not None:
            on_round(done)
    return times
