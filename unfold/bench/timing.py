"""Interleaved timing (BENCHMARKS.md, "Method"): warm-up, then rounds A B C, B C A, C A B, ...,
so that drift and noise (a neighbour process, the CPU's clock) hit every model alike and the
per-round ratios pair up. Each round starts one model later, so that whatever opening a round
costs (caches left cold by the model before) falls on every model alike, not on A alone.
(Measured here, it is within this machine's ~1% noise: two INT8 models of one graph, 100
rounds, the other model first vs second: 0.997 [0.992, 1.005] and 1.011 [0.996, 1.023] in fixed
order, 0.989 [0.983, 0.998] and 1.005 [0.999, 1.015] rotated.) Rounds stop at a count or after a
time budget, whichever is given."""

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
    `rounds` timed ones, or as many as fit in `seconds` (at least MIN_ROUNDS), round i in the
    order of `runs` rotated by i. `on_round(i)` after each timed round (a progress bar)."""
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
    names = list(runs)
    started = clock()
    done = 0
    while True:
        if rounds is not None and done >= rounds:
            break
        if seconds is not None and done >= MIN_ROUNDS and clock() - started >= seconds:
            break
        first = done % len(names)
        for name in names[first:] + names[:first]:
            start = clock()
            runs[name]()
            times[name].append(clock() - start)
        done += 1
        if on_round is not None:
            on_round(done)
    return times
