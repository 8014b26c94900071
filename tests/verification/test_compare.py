"""Comparing one output: the numbers reported, the tolerance rule (atol + rtol * scale),
non-finite values and shapes, and per-output tolerances from the command line."""

from __future__ import annotations

import numpy as np
import pytest

from unfold.errors import UnfoldError
from unfold.verification.compare import compare_output
from unfold.verification.tolerances import (
    DEFAULT_TOLERANCES,
    EXACT,
    Tolerance,
    default_tolerance,
    resolve_tolerances,
)

FP32 = DEFAULT_TOLERANCES["float32"]


def test_errors_are_measured_and_judged_against_the_output_scale() -> None:
    ref = np.array([10.0, -20.0, 0.5], np.float32)
    cand = ref + np.array([1e-4, 0.0, -1e-5], np.float32)
    result = compare_output("y", ref, cand, FP32)
    assert result.scale == 20.0
    assert result.max_abs == pytest.approx(1e-4, rel=1e-2)  # fp32 rounding of 10 + 1e-4
    assert result.max_rel == pytest.approx(2e-5, rel=1e-2)  # 1e-5 / 0.5
    assert result.cosine == pytest.approx(1.0, abs=1e-9)
    assert result.allowed == pytest.approx(1e-6 + 1e-5 * 20)
    assert result, "1e-4 off on a scale of 20 is within 1e-5 relative"
    worse = compare_output("y", ref, ref + np.float32(5e-4), FP32)
    assert not worse
    assert worse.needed_rtol == pytest.approx((5e-4 - 1e-6) / 20, rel=1e-2)


def test_identical_outputs_pass_even_exactly() -> None:
    ref = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = compare_output("y", ref, ref.copy(), EXACT)
    assert result and result.max_abs == 0 and result.cosine == pytest.approx(1.0)


def test_shape_mismatch_fails_whatever_the_tolerance() -> None:
    result = compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)), Tolerance(1e9, 1e9))
    assert not result and "shape (3, 2), expected (2, 3)" in (result.problem or "")


def test_matching_non_finite_values_agree_and_one_sided_ones_fail() -> None:
    ref = np.array([np.nan, np.inf, 1.0])
    assert compare_output("y", ref, ref.copy(), FP32)
    result = compare_output("y", ref, np.array([np.nan, 1.0, 1.0]), Tolerance(1e9, 1e9))
    assert not result and result.problem == "1 element(s) non-finite on one side only"


def test_defaults_by_dtype_and_exact_for_integers() -> None:
    assert default_tolerance(np.float32) == Tolerance(atol=1e-6, rtol=1e-5)
    assert default_tolerance(np.float16).rtol == 1e-2
    assert default_tolerance(np.int64) == EXACT
    assert default_tolerance(np.bool_) == EXACT


def test_tolerances_for_all_outputs_or_by_output_name() -> None:
    dtypes = {"logits": np.dtype(np.float32), "ids": np.dtype(np.int64)}
    tol = resolve_tolerances(dtypes, atol={"ids": 0, "logits": 1e-4}, rtol={"logits": 1e-3})
    assert tol == {"logits": Tolerance(atol=1e-4, rtol=1e-3), "ids": Tolerance(atol=0, rtol=0)}
    tol = resolve_tolerances(dtypes, atol=1e-4)
    assert tol == {"logits": Tolerance(atol=1e-4, rtol=1e-5), "ids": Tolerance(atol=1e-4, rtol=0)}


@pytest.mark.parametrize(("atol", "message"), [
    ("1e-4", r"^atol='1e-4': a tolerance is a finite number >= 0 \(e.g. atol=0.0001\), for "
             r"every output or by output name \(e.g. atol=\{'logits': 0.0001\}\)"),
    (-1, "^atol=-1: a tolerance is a finite number >= 0"),
    (float("nan"), "^atol=nan: a tolerance is"),
    (True, "^atol=True: a tolerance is"),
    (["1e-4"], r"^atol=\['1e-4'\]: a tolerance is"),
    ({"logits": None}, r"^atol=\{'logits': None\}: a tolerance is"),
    ({1: 1e-4}, r"^atol=\{1: 0.0001\}: keys are output names \(str\), not int"),
    ({"scores": 1e-3}, r"^atol=\{'scores': 0.001\}: no output 'scores'; outputs: logits"),
])
def test_bad_tolerances_are_named(atol: object, message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        resolve_tolerances({"logits": np.dtype(np.float32)}, atol=atol)
