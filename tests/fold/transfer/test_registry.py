"""The registry (unfold/fold/transfer/__init__.py): one handler per (domain, op), every
sub-rule a handler uses listed once, and the dispatcher's default for an op it does not know."""

from __future__ import annotations

import pytest

from unfold.fold.flow import Handler, Rule
from unfold.fold.transfer import FAMILIES, HANDLERS, RULES, _registry, rule_ops


def test_each_op_has_exactly_one_handler() -> None:
    seen: dict[tuple[str, str], str] = {}
    for handler in FAMILIES:
        for op in handler.ops:
            assert (handler.domain, op) not in seen, (op, seen.get((handler.domain, op)))
            seen[(handler.domain, op)] = handler.family
    assert {key: h.family for key, h in HANDLERS.items()} == seen


def test_a_second_handler_for_an_op_is_refused() -> None:
    rule = Rule("r", "transfer", "x")
    with pytest.raises(AssertionError, match="Add has two handlers: a and b"):
        _registry((Handler("a", frozenset({"Add"}), (rule,)),
                   Handler("b", frozenset({"Add", "Mul"}), (rule,))))


def test_the_ops_that_had_several_rule_families_have_one_handler_each() -> None:
    """Add was attention's, constant-op's and residual-add's; MatMul consumer-linear's,
    token-linear's and attention's; Identity layout's and attention's."""
    assert HANDLERS[("", "Add")].family == "arithmetic"
    assert [r.name for r in HANDLERS[("", "Add")].rules] == ["constant-op", "residual-add",
                                                              "gate"]
    assert HANDLERS[("", "MatMul")].family == "linear"
    assert HANDLERS[("", "Identity")].family == "layout"
    backward = {op for (_, op), h in HANDLERS.items() if h.back is not None}
    assert {"MatMul", "Gemm", "Conv", "Gather", "Transpose", "Reshape", "Add", "Mul",
            "Concat", "Pad", "Slice", "Expand"} <= backward


def test_every_rule_names_its_ops() -> None:
    assert rule_ops("producer") == ["Conv", "Gemm", "MatMul"]
    assert rule_ops("embedding") == ["Gather"]
    assert rule_ops("token-linear") == ["MatMul"]
    assert rule_ops("residual-add") == ["Add", "Sub"]
    assert rule_ops("constant-op") == ["Add", "Div", "Mul", "Sub"]
    assert rule_ops("compose") == ["(norm sites)"]
    for name in RULES:
        assert rule_ops(name), name
