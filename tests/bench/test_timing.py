"""unfold.bench.timing: warm-up first, then rounds in the order A B C, B C A, C A B, timed one
call at a time; a count or a time budget (at least MIN_ROUNDS)."""

from __future__ import annotations

import itertools

import pytest

from unfold.bench.timing import MIN_ROUNDS, interleaved


def _recording() -> tuple[list[str], dict]:
    calls: list[str] = []
    return calls, {name: (lambda n=name: calls.append(n)) for name in "ABC"}


def test_rounds_interleave_after_the_warm_up() -> None:
    calls, runs = _recording()
    ticks = itertools.count()
    seen_rounds: list[int] = []
    times = interleaved(runs, rounds=4, warmup=2, clock=lambda: float(next(ticks)),
                        on_round=seen_rounds.append)
    assert calls == list("ABC") * 2 + list("ABC" "BCA" "CAB" "ABC"), \
        "2 warm-up rounds, then 4 timed, each starting one model later"
    assert {k: len(v) for k, v in times.items()} == {"A": 4, "B": 4, "C": 4}
    assert all(t == 1.0 for v in times.values() for t in v), "each call timed on its own"
    assert seen_rounds == [1, 2, 3, 4]


def test_a_cost_of_opening_a_round_falls_on_every_model_alike() -> None:
    """(a model that opens a round pays 1 s more: over rounds, each pays it as often)"""
    calls: list[str] = []
    clock_now = [0.0]

    def run(name: str) -> None:
        opens_round = len(calls) % 3 == 0
        calls.append(name)
        clock_now[0] += 2.0 if opens_round else 1.0

    runs = {name: (lambda n=name: run(n)) for name in "ABC"}
    times = interleaved(runs, rounds=6, warmup=0, clock=lambda: clock_now[0])
    assert {name: sum(t) for name, t in times.items()} == {"A": 8.0, "B": 8.0, "C": 8.0}


def test_a_time_budget_stops_rounds_but_keeps_a_minimum() -> None:
    calls, runs = _recording()
    ticks = itertools.count(step=10)  # every clock read: 10 s later
    times = interleaved(runs, seconds=1.0, warmup=0, clock=lambda: float(next(ticks)))
    assert len(times["A"]) == MIN_ROUNDS


def test_rounds_or_seconds_exactly_one() -> None:
    _, runs = _recording()
    for kwargs in ({}, {"rounds": 3, "seconds": 1.0}, {"rounds": 0}, {"seconds": -1.0}):
        with pytest.raises(ValueError):
            interleaved(runs, **kwargs)
