"""attention: a pre-norm attention block whose projections have no bias. The norm's scale folds
into q, k and v's weights; what the shift becomes, b @ W, is a constant row on each:

- on v, it passes softmax(·) @ v (every row of attention sums to one) and folds into the
  output projection's bias;
- on k, q @ (k + 1·β)ᵀ = q @ kᵀ + (q β)·1ᵀ adds a constant per query, which a scalar scaling
  and an additive mask keep, and the Softmax over the keys removes: it vanishes;
- on q, (q + 1·β) @ kᵀ adds β @ kᵀ, a row that varies with the keys: it stays, one Add.

Each folded graph is compared with its no-norm twin's op counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model
from unfold.fold.transfer.attention import QUERY_SHIFT

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
D, T = 8, 5


def _attention(norm: bool, biases: Collection[str], mask: str | None = None,
               scaling: str = "Mul", softmax_axis: int = -1) -> onnx.ModelProto:
    """x (N, T, D) -> norm -> q, k, v projections (a bias Add for those in `biases`) ->
    softmax((q @ kᵀ) · 1/√D [+ mask]) @ v -> output projection + bias. `mask`: None, "const"
    (causal, a constant) or "input" (a padding mask (N, 1, T), a graph input)."""
    nodes, inits = [], []
    source = "x"
    if norm:
        nodes += [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
                  N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
        inits += norm_constants(D)
        source = "normed"
    for p in "qkv":
        out = f"{p}_mm" if p in biases else p
        nodes.append(N("MatMul", [source, f"W{p}"], [out], name=f"{p}_proj"))
        inits.append(const(f"W{p}", RNG.normal(size=(D, D))))
        if p in biases:
            nodes.append(N("Add", [out, f"c{p}"], [p], name=f"{p}_bias"))
            inits.append(const(f"c{p}", RNG.normal(size=D)))
    nodes += [N("Transpose", ["k"], ["kT"], name="k_t", perm=[0, 2, 1]),
              N("MatMul", ["q", "kT"], ["logits"], name="qk")]
    if scaling == "Mul":
        nodes.append(N("Mul", ["logits", "inv_sqrt_d"], ["scores"], name="scale"))
        inits.append(const("inv_sqrt_d", np.array(D ** -0.5)))
    else:
        nodes.append(N("Div", ["logits", "sqrt_d"], ["scores"], name="scale"))
        inits.append(const("sqrt_d", np.array(D ** 0.5)))
    inputs = {"x": ["N", T, D]}
    if mask is not None:
        nodes.append(N("Add", ["scores", "mask"], ["masked"], name="mask"))
        if mask == "const":
            inits.append(const("mask", np.triu(np.full((T, T), -1e4), 1)))
        else:
            inputs["mask"] = ["N", 1, T]
    nodes += [N("Softmax", ["masked" if mask else "scores"], ["attn"], name="softmax",
                axis=softmax_axis),
              N("MatMul", ["attn", "v"], ["context"], name="av"),
              N("MatMul", ["context", "Wo"], ["o_mm"], name="o_proj"),
              N("Add", ["o_mm", "co"], ["y"], name="o_bias")]
    inits += [const("Wo", RNG.normal(size=(D, D))), const("co", RNG.normal(size=D))]
    return model(nodes, inits, inputs, {"y": ["N", T, D]})


def _feeds(mask: str | None = None) -> dict[str, np.ndarray]:
    feeds = {"x": RNG.normal(size=(2, T, D)).astype(np.float32)}
    if mask == "input":
        feeds["mask"] = np.where(RNG.random((2, 1, T)) < 0.3, -1e4, 0).astype(np.float32)
    return feeds


def _twin_ops(*args, **kwargs):
    _, twin = fold_model(_attention(False, *args, **kwargs))
    return twin.ops_after


def test_a_value_shift_passes_softmax_rows_and_folds_into_the_output_projection() -> None:
    m = _attention(True, biases="qk")
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site
    assert sorted(site.absorbed_by) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert site.path == ["moved past MatMul 'av' (attention rows sum to 1)"]
    assert report.ops_after == _twin_ops("qk")
    assert_same_outputs(m, folded, _feeds())


def test_a_value_shift_stops_where_the_softmax_is_over_another_axis() -> None:
    """Softmax over the queries: the rows of attention no longer sum to one; the shift stays
    as one Add after v's projection (one more than the twin)."""
    m = _attention(True, biases="qk", softmax_axis=1)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial", site
    assert site.reasons == ["reader MatMul 'av': the affine on its right operand neither "
                            "passes attention rows nor is a key's pure shift"]
    twin = _twin_ops("qk", softmax_axis=1)
    assert report.ops_after == twin + Counter(Add=1)
    assert_same_outputs(m, folded, _feeds())


@pytest.mark.parametrize(("mask", "scaling"), [(None, "Mul"), ("const", "Mul"),
                                               ("input", "Div")],
                         ids=["scaled", "causal_mask", "padding_mask_div"])
def test_a_key_shift_vanishes_in_the_softmax_over_the_keys(mask, scaling: str) -> None:
    m = _attention(True, biases="qv", mask=mask, scaling=scaling)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site
    assert sorted(site.absorbed_by) == ["k_proj", "q_proj", "v_proj"]
    expected = ["moved past Transpose 'k_t'",
                "key shift carried into MatMul 'qk' as a per-query constant",
                f"moved past {scaling} 'scale' (a per-query constant stays one)"]
    if mask is not None:
        expected.append("moved past Add 'mask' (a per-query constant stays one)")
    assert site.path == expected + ["the key's shift vanished in Softmax 'softmax'"]
    assert report.ops_after == _twin_ops("qv", mask=mask, scaling=scaling)
    assert_same_outputs(m, folded, _feeds(mask))


def test_a_key_shift_stays_where_the_softmax_is_over_the_queries() -> None:
    """The per-query constant is not constant along axis 1: it cannot vanish there, and, being
    unknown, cannot be materialized after the MatMul either: the shift stays on k."""
    m = _attention(True, biases="qv", softmax_axis=1)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial", site
    assert site.reasons == ["reader Softmax 'softmax': a softmax over another axis does not "
                            "remove the per-query constant"]
    assert report.ops_after == _twin_ops("qv", softmax_axis=1) + Counter(Add=1)
    assert_same_outputs(m, folded, _feeds())


def test_a_query_shift_stops_at_q_times_k_transposed() -> None:
    """(q + 1·β) @ kᵀ = q @ kᵀ + 1·(β @ kᵀ): a row that varies with the keys, which no
    constant can hold. The Add of β stays after q's projection: one op more than the twin."""
    m = _attention(True, biases="kv")
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial", site
    assert sorted(site.absorbed_by) == ["k_proj", "q_proj", "v_proj"]
    assert site.reasons == [f"reader MatMul 'qk': {QUERY_SHIFT}"]
    assert report.ops_after == _twin_ops("kv") + Counter(Add=1)
    assert_same_outputs(m, folded, _feeds())


def test_with_no_projection_bias_only_the_query_shift_stays() -> None:
    m = _attention(True, biases="")
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial", site
    assert report.ops_after == _twin_ops("") + Counter(Add=1), dict(report.ops_after)
    assert_same_outputs(m, folded, _feeds())
