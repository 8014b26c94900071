"""consumer-linear (a norm read by MatMul/Gemm folds into their weights) and token-linear (a
linear over an axis the norm's scale is constant along: the scale passes, the shift goes
into its bias)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.errors import UnfoldError
from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node


def _norm_nodes(x: str = "x", out: str = "normed") -> list:
    return [N("Mul", [x, "norm.scale"], ["scaled"], name="norm_mul"),
            N("Add", ["scaled", "norm.shift"], [out], name="norm_add")]


def _x(shape=(2, 5, 8)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


def _norm_then_linear():
    """x -> norm -> MatMul 'fc' -> Add bias -> y, the basic pre-norm site."""
    return model(_norm_nodes() + [N("MatMul", ["normed", "W"], ["mm"], name="fc"),
                                  N("Add", ["mm", "c"], ["y"], name="fc_bias")],
                 norm_constants(8) + [const("W", RNG.normal(size=(8, 4))),
                                      const("c", RNG.normal(size=4))],
                 {"x": ["N", 5, 8]}, {"y": ["N", 5, 4]})


def test_matmul_with_bias() -> None:
    m = _norm_then_linear()
    folded, report = fold_model(m)
    assert [(s.status, s.absorbed_by) for s in report.sites] == [("folded", ["fc"])]
    assert report.ops_after == {"MatMul": 1, "Add": 1}, "only the linear (and its bias) is left"
    assert bool(report)
    assert_same_outputs(m, folded, _x())


def test_three_readers_each_get_their_own_weights() -> None:
    nodes, inits, outputs = _norm_nodes(), norm_constants(8), {}
    for name in "qkv":
        nodes += [N("MatMul", ["normed", f"W{name}"], [f"{name}_mm"], name=name),
                  N("Add", [f"{name}_mm", f"c{name}"], [name], name=f"{name}_bias")]
        inits += [const(f"W{name}", RNG.normal(size=(8, 6))), const(f"c{name}", RNG.normal(size=6))]
        outputs[name] = ["N", 5, 6]
    m = model(nodes, inits, {"x": ["N", 5, 8]}, outputs)
    folded, report = fold_model(m)
    assert report.sites[0].status == "folded"
    assert sorted(report.sites[0].absorbed_by) == ["k", "q", "v"]
    assert report.ops_after == {"MatMul": 3, "Add": 3}
    weights = {i.name for i in folded.graph.initializer}
    assert not {"Wq", "Wk", "Wv"} & weights, "folded weights are new initializers"
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize("trans_b", [1, 0], ids=["transB", "no_transB"])
def test_gemm(trans_b: int) -> None:
    w = RNG.normal(size=(3, 8) if trans_b else (8, 3))
    m = model(_norm_nodes() + [N("Gemm", ["normed", "W", "c"], ["y"], name="head",
                                 transB=trans_b)],
              norm_constants(8) + [const("W", w), const("c", RNG.normal(size=3))],
              {"x": ["N", 8]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    assert report.sites[0].status == "folded" and report.ops_after == {"Gemm": 1}
    assert_same_outputs(m, folded, _x((4, 8)))


def test_matmul_without_bias_gets_an_add_for_the_shift() -> None:
    """The shift b @ W becomes the MatMul's bias; that Add is one op more than the no-norm
    twin has, so at a graph output it is reported materialized."""
    m = model(_norm_nodes() + [N("MatMul", ["normed", "W"], ["y"], name="fc")],
              norm_constants(8) + [const("W", RNG.normal(size=(8, 4)))],
              {"x": ["N", 5, 8]}, {"y": ["N", 5, 4]})
    folded, report = fold_model(m)
    assert report.sites[0].status == "materialized"
    assert report.ops_after == {"MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_the_shift_of_a_bias_less_matmul_before_a_relu_stays_as_one_add() -> None:
    """The scale folds into the weight; the shift b @ W has no bias to go into and the Relu
    needs true values: one Add stays (the twin has none), reported partial, with why."""
    m = model(_norm_nodes() + [N("MatMul", ["normed", "W"], ["mm"], name="fc"),
                               N("Relu", ["mm"], ["y"], name="act")],
              norm_constants(8) + [const("W", RNG.normal(size=(8, 4)))],
              {"x": ["N", 5, 8]}, {"y": ["N", 5, 4]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial" and site.absorbed_by == ["fc"]
    assert site.reasons == ["reader Relu 'act': Relu does not commute with a shift"]
    assert report.ops_after == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert_same_outputs(m, folded, _x())


def test_authors_eval_form_div_by_sqrt_of_constants() -> None:
    """UN as the authors export it: x / sqrt(ρ + eps) * γ + β, the Sqrt on constants."""
    nodes = [N("Add", ["rho", "eps"], ["rho_eps"]), N("Sqrt", ["rho_eps"], ["std"]),
             N("Div", ["x", "std"], ["z"], name="norm_div"),
             N("Mul", ["z", "gamma"], ["zg"], name="norm_mul"),
             N("Add", ["zg", "beta"], ["normed"], name="norm_add"),
             N("MatMul", ["normed", "W"], ["mm"], name="fc"), N("Add", ["mm", "c"], ["y"])]
    inits = [const("rho", RNG.uniform(0.5, 2, 8)), const("eps", np.array(1e-5)),
             const("gamma", RNG.normal(size=8)), const("beta", RNG.normal(size=8)),
             const("W", RNG.normal(size=(8, 4))), const("c", RNG.normal(size=4))]
    m = model(nodes, inits, {"x": ["N", 5, 8]}, {"y": ["N", 5, 4]})
    folded, report = fold_model(m)
    assert [s.kind for s in report.sites] == ["offline affine (Div/Mul/Add)"]
    assert report.sites[0].status == "folded"
    assert report.ops_after == {"MatMul": 1, "Add": 1}, "no Sqrt/Div left for a later pass"
    assert_same_outputs(m, folded, _x())


def test_a_reader_that_cannot_absorb_keeps_the_norm_for_itself_only() -> None:
    m = model(_norm_nodes() + [N("MatMul", ["normed", "W"], ["mm"], name="fc"),
                               N("Add", ["mm", "c"], ["y"], name="fc_bias"),
                               N("Relu", ["normed"], ["r"], name="act")],
              norm_constants(8) + [const("W", RNG.normal(size=(8, 4))),
                                   const("c", RNG.normal(size=4))],
              {"x": ["N", 5, 8]}, {"y": ["N", 5, 4], "r": ["N", 5, 8]})
    folded, report = fold_model(m)
    site = report.sites[0]
    assert (site.status, site.absorbed_by) == ("partial", ["fc"])
    assert site.reasons == ["reader Relu 'act': Relu does not commute with a shift"]
    assert not bool(report)
    assert report.ops_after == {"Mul": 1, "Add": 2, "MatMul": 1, "Relu": 1}
    assert_same_outputs(m, folded, _x())


def test_not_applied_when_the_weight_is_not_constant() -> None:
    m = model(_norm_nodes() + [N("MatMul", ["normed", "w_in"], ["y"], name="fc")],
              norm_constants(8), {"x": ["N", 5, 8], "w_in": [8, 4]}, {"y": ["N", 5, 4]})
    folded, report = fold_model(m)
    site = report.sites[0]
    assert site.status == "stayed"
    assert site.reasons == ["reader MatMul 'fc': it multiplies the affine's tensor by another "
                            "variable"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, {**_x(), "w_in": RNG.normal(size=(8, 4)).astype(np.float32)})


def test_linear_bias_and_attention_scaling_are_not_sites() -> None:
    m = model([N("MatMul", ["x", "W"], ["mm"]), N("Add", ["mm", "c"], ["lin"]),
               N("Mul", ["lin", "half"], ["y"])],
              [const("W", RNG.normal(size=(8, 4))), const("c", RNG.normal(size=4)),
               const("half", np.array(0.5))], {"x": ["N", 8]}, {"y": ["N", 4]})
    _, report = fold_model(m)
    assert report.sites == []


def test_folding_twice_equals_folding_once() -> None:
    m = _norm_then_linear()
    once, _ = fold_model(m)
    twice, report = fold_model(once)
    assert report.sites == [] and report.ops_after == report.ops_before
    assert onnx.printer.to_text(once.graph) == onnx.printer.to_text(twice.graph)


def test_skip_and_unknown_skip() -> None:
    m = model(_norm_nodes() + [N("MatMul", ["normed", "W"], ["y"], name="fc")],
              norm_constants(8) + [const("W", RNG.normal(size=(8, 4)))],
              {"x": ["N", 8]}, {"y": ["N", 4]})
    with pytest.raises(UnfoldError,
                       match=r"skip=\['nope'\]: unknown rule\(s\); valid: compose, producer, "):
        fold_model(m, skip=["nope"])
    _, report = fold_model(m, skip=["consumer-linear"])
    assert report.sites[0].status == "stayed"


def test_a_norm_feeding_a_graph_output_is_materialized() -> None:
    m = model(_norm_nodes(out="y"), norm_constants(8), {"x": ["N", 8]}, {"y": ["N", 8]})
    _, report = fold_model(m)
    assert report.sites[0].status == "materialized" and bool(report)
    assert report.ops_after == {"Mul": 1, "Add": 1}


def test_a_constant_that_broadcasts_the_data_is_not_a_norm() -> None:
    """x (N, 1) * s (8,) makes (N, 8): not a per-channel affine of x."""
    m = model([N("Mul", ["x", "norm.scale"], ["s"]), N("Add", ["s", "norm.shift"], ["normed"]),
               N("MatMul", ["normed", "W"], ["y"])],
              norm_constants(8) + [const("W", RNG.normal(size=(8, 4)))],
              {"x": ["N", 1]}, {"y": ["N", 4]})
    folded, report = fold_model(m)
    assert report.sites == [] and report.ops_after == report.ops_before
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(3, 1)).astype(np.float32)})


def _token_mixing(bias: bool) -> onnx.ModelProto:
    """MLP-Mixer/ResMLP: norm -> transpose -> Linear over the 5 tokens -> transpose back ->
    LayerScale -> residual Add with the stream."""
    nodes = _norm_nodes() + [
        N("Transpose", ["normed"], ["t"], perm=[0, 2, 1]),
        N("MatMul", ["t", "Wt"], ["mix" if bias else "mixed"], name="token_mix"),
        *([N("Add", ["mix", "ct"], ["mixed"], name="token_bias")] if bias else []),
        N("Transpose", ["mixed"], ["back"], perm=[0, 2, 1]),
        N("Mul", ["back", "ls"], ["scaled_branch"], name="layer_scale"),
        N("Add", ["x", "scaled_branch"], ["y"], name="residual")]
    inits = norm_constants(8) + [const("Wt", RNG.normal(size=(5, 5))),
                                 const("ls", RNG.uniform(0.1, 1, 8))]
    if bias:
        inits.append(const("ct", RNG.normal(size=5)))
    return model(nodes, inits, {"x": ["N", 5, 8]}, {"y": ["N", 5, 8]})


@pytest.mark.parametrize("bias", [True, False])
def test_a_linear_over_tokens_passes_the_scale_and_takes_the_shift(bias: bool) -> None:
    """The scale commutes with the token linear and composes with the LayerScale, whose one
    Mul then carries both (what the twin has); the shift b @ W becomes the token linear's
    (C, T) bias (or, without one, a pending shift carried past the residual Add)."""
    m = _token_mixing(bias)
    folded, report = fold_model(m)
    norm, layer_scale = report.sites
    assert any("a linear over an axis the scale is constant along" in p for p in norm.path)
    expected = {"Transpose": 2, "MatMul": 1, "Mul": 1, "Add": 2 if bias else 1}
    if not bias:  # the shift ends at the graph output: one Add there
        expected["Add"] += 1
    assert report.ops_after == expected, dict(report.ops_after)
    assert layer_scale.status == "kept", "the LayerScale's Mul carries the norm's scale"
    assert norm.status == ("folded" if bias else "materialized"), norm
    assert_same_outputs(m, folded, _x())


def test_skip_names_the_sub_rule_the_fold_would_have_used() -> None:
    """--skip applies to the sub-rule a plan takes: skipping consumer-linear leaves the token
    linear's fold alone, and skipping token-linear says so (it used to be blamed on
    consumer-linear, and skipping that turned the token linear off too)."""
    m = _token_mixing(bias=True)
    _, report = fold_model(m, skip=["consumer-linear"])
    assert report.sites[0].status == "folded", report.sites[0]
    _, report = fold_model(m, skip=["token-linear"])
    norm = report.sites[0]
    assert norm.status == "stayed"
    assert norm.reasons == ["reader MatMul 'token_mix': rule 'token-linear' is skipped"]
