"""The dataflow pass itself (unfold/fold/dataflow.py): the per-edge decisions by ops added, what
the report says a site became, idempotence, linear time, and the bound on a post-norm stream's
carried scale (`max_scale`)."""

from __future__ import annotations

import gc
import time
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from unfold.fold import fold_model

from .helpers import RNG, assert_same_outputs, const, model, norm_constants, post_norm_stack

N = helper.make_node
C = 8
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
RELU_REASON = "Relu does not commute with a shift"


def _x(shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


# --- decisions --------------------------------------------------------------------------------

@pytest.mark.parametrize("relus", [1, 2])
def test_a_linear_absorbs_its_copy_and_the_relus_share_one_materialization(relus: int) -> None:
    """The linear's edge absorbs (cost 0); the Relus' edges need the true values: one Mul and
    one Add at the norm, shared by every Relu, whatever their number."""
    nodes = NORM + [N("MatMul", ["normed", "W"], ["mm"], name="fc"),
                    N("Add", ["mm", "c"], ["y"], name="fc_bias")]
    outputs = {"y": ["N", 5, 3]}
    for i in range(relus):
        nodes.append(N("Relu", ["normed"], [f"r{i}"], name=f"act{i}"))
        outputs[f"r{i}"] = ["N", 5, C]
    m = model(nodes, norm_constants(C) + [const("W", RNG.normal(size=(C, 3))),
                                          const("c", RNG.normal(size=3))],
              {"x": ["N", 5, C]}, outputs)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("partial", ["fc"]), site
    assert site.reasons == [f"reader Relu 'act{i}': {RELU_REASON}" for i in range(relus)]
    assert report.ops_after == {"MatMul": 1, "Add": 2, "Mul": 1, "Relu": relus}
    assert_same_outputs(m, folded, _x())


def test_a_fan_out_through_two_transposes_is_materialized_once_at_the_norm() -> None:
    """Carried past each Transpose the affine would be materialized twice (4 ops) for the two
    Relus; at the norm it costs 2: it stays there, and nothing moves."""
    m = model(NORM + [N("Transpose", ["normed"], ["t1"], name="t1", perm=[0, 2, 1]),
                      N("Relu", ["t1"], ["r1"], name="act1"),
                      N("Transpose", ["normed"], ["t2"], name="t2", perm=[1, 0, 2]),
                      N("Relu", ["t2"], ["r2"], name="act2")],
              norm_constants(C), {"x": [2, 5, C]}, {"r1": [2, C, 5], "r2": [5, 2, C]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.path == [], "not moved past either Transpose"
    assert site.reasons == [f"reader Relu 'act1': {RELU_REASON}",
                            f"reader Relu 'act2': {RELU_REASON}"]
    assert report.ops_after == {"Mul": 1, "Add": 1, "Transpose": 2, "Relu": 2}
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    assert mul.input[0] == "x", "the Mul reads the norm's input, before the Transposes"
    assert_same_outputs(m, folded, _x())


def test_a_norm_moved_to_a_graph_output_is_materialized_there() -> None:
    m = model(NORM + [N("Transpose", ["normed"], ["y"], name="t", perm=[0, 2, 1])],
              norm_constants(C), {"x": [2, 5, C]}, {"y": [2, C, 5]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "materialized" and site.reasons == [], site
    assert site.path == ["moved past Transpose 't'", "materialized at the graph output 'y'"]
    assert bool(report) and report.left == []
    assert report.ops_after == {"Transpose": 1, "Mul": 1, "Add": 1}
    assert [n.op_type for n in folded.graph.node] == ["Transpose", "Mul", "Add"]
    assert_same_outputs(m, folded, _x())


# --- the report -------------------------------------------------------------------------------

def test_a_norm_composed_into_a_layer_scale_that_stays_is_folded_and_the_scale_kept() -> None:
    """norm -> + position table (its constant takes the shift) -> LayerScale Mul -> Sigmoid:
    the norm's scale composes into the LayerScale, whose one Mul then carries both. Nothing
    of the norm is left: it is 'folded', the LayerScale 'kept', nothing is left over."""
    m = model(NORM + [N("Add", ["normed", "pos"], ["p"], name="pos_add"),
                      N("Mul", ["p", "gamma"], ["ls"], name="layer_scale"),
                      N("Sigmoid", ["ls"], ["y"], name="gate")],
              norm_constants(C) + [const("pos", RNG.normal(size=(1, 5, C))),
                                   const("gamma", RNG.uniform(0.1, 1, C))],
              {"x": ["N", 5, C]}, {"y": ["N", 5, C]})
    folded, report = fold_model(m)
    norm, layer_scale = report.sites
    assert (norm.status, norm.reasons) == ("folded", []), norm
    assert norm.path == ["moved past Add 'pos_add' (its constant took the shift)",
                         "composed with 'layer_scale' (offline affine (Mul))"]
    assert (layer_scale.status, layer_scale.merged_into) == ("kept", "norm_mul"), layer_scale
    assert layer_scale.reasons == ["reader Sigmoid 'gate': Sigmoid does not commute with a "
                                   "per-channel affine"]
    assert report.left == [] and [s.name for s in report.kept] == ["layer_scale"]
    assert bool(report)
    assert report.ops_after == {"Add": 1, "Mul": 1, "Sigmoid": 1}, "what the twin has"
    assert_same_outputs(m, folded, _x())


def test_merged_into_names_the_earlier_site_on_a_post_norm_stream() -> None:
    """Post-norm: n1's pending is carried past the residual Add (fc1 divided by its scale)
    and n2 composes into it: n2 is reported merged into n1, both folded."""
    nodes = [N("Mul", ["x", "n1.scale"], ["s1"], name="n1_mul"),
             N("Add", ["s1", "n1.shift"], ["h"], name="n1_add"),
             N("MatMul", ["h", "W1"], ["m1"], name="fc1"),
             N("Add", ["m1", "c1"], ["f"], name="fc1_bias"),
             N("Add", ["h", "f"], ["r"], name="residual"),
             N("Mul", ["r", "n2.scale"], ["s2"], name="n2_mul"),
             N("Add", ["s2", "n2.shift"], ["h2"], name="n2_add"),
             N("MatMul", ["h2", "W2"], ["m2"], name="head"),
             N("Add", ["m2", "c2"], ["y"], name="head_bias")]
    m = model(nodes, norm_constants(C, "n1") + norm_constants(C, "n2") + [
        const("W1", RNG.normal(size=(C, C))), const("c1", RNG.normal(size=C)),
        const("W2", RNG.normal(size=(C, 3))), const("c2", RNG.normal(size=3))],
        {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(m)
    first, second = report.sites
    assert (first.status, first.merged_into) == ("folded", None), first
    assert (second.status, second.merged_into) == ("folded", "n1_mul"), second
    assert second.path == ["composed into 'n1_mul'"]
    assert "composed with 'n2_mul' (offline affine (Mul/Add))" in first.path
    assert report.ops_after == {"MatMul": 2, "Add": 3}
    assert_same_outputs(m, folded, _x())


def test_a_padded_conv_takes_the_scale_and_the_site_is_partial() -> None:
    m = model(NORM + [N("Conv", ["normed", "K", "B"], ["y"], name="conv", kernel_shape=[3, 3],
                        pads=[1, 1, 1, 1])],
              [const("norm.scale", RNG.uniform(0.5, 2, (1, C, 1, 1))),
               const("norm.shift", RNG.normal(size=(1, C, 1, 1))),
               const("K", RNG.normal(size=(4, C, 3, 3))), const("B", RNG.normal(size=4))],
              {"x": ["N", C, 4, 4]}, {"y": ["N", 4, 4, 4]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("partial", ["conv"]), site
    assert site.path == ["scale folded into its reader Conv 'conv'"]
    assert site.reasons == ["reader Conv 'conv' pads its input: the shift stays as an Add of "
                            "b/a before it (in its bias it would be wrong at the borders)"]
    assert [s.name for s in report.left] == ["norm_mul"] and not report
    assert report.ops_after == {"Add": 1, "Conv": 1}
    assert_same_outputs(m, folded, _x((2, C, 4, 4)))


# --- idempotence, time ------------------------------------------------------------------------

def _pre_norm_chain(blocks: int, channels: int = 16) -> onnx.ModelProto:
    """`blocks` pre-norm MLP blocks, x + fc2(relu(fc1(norm(x)))), on (N, 4, channels); its
    own random weights (the same whatever ran before), the branches small enough that the
    stream stays in a range where fp32 compares (x + f(x) with a fixed affine for a norm grows
    geometrically: with branches of gain ~1, 128 blocks reach 1e15)."""
    rng = np.random.default_rng(blocks)
    nodes, inits = [], []
    x = "x"
    for i in range(blocks):
        p = f"b{i}"
        nodes += [N("Mul", [x, f"{p}.s"], [f"{p}_s"], name=f"{p}_norm_mul"),
                  N("Add", [f"{p}_s", f"{p}.b"], [f"{p}_n"], name=f"{p}_norm_add"),
                  N("MatMul", [f"{p}_n", f"{p}.W1"], [f"{p}_m1"], name=f"{p}_fc1"),
                  N("Add", [f"{p}_m1", f"{p}.c1"], [f"{p}_h"], name=f"{p}_fc1_bias"),
                  N("Relu", [f"{p}_h"], [f"{p}_r"], name=f"{p}_act"),
                  N("MatMul", [f"{p}_r", f"{p}.W2"], [f"{p}_m2"], name=f"{p}_fc2"),
                  N("Add", [f"{p}_m2", f"{p}.c2"], [f"{p}_f"], name=f"{p}_fc2_bias"),
                  N("Add", [x, f"{p}_f"], [f"{p}_out"], name=f"{p}_residual")]
        inits += [const(f"{p}.s", rng.uniform(0.5, 2, channels)),
                  const(f"{p}.b", rng.normal(size=channels)),
                  const(f"{p}.W1", rng.normal(size=(channels, channels)) / 4),
                  const(f"{p}.c1", rng.normal(size=channels)),
                  const(f"{p}.W2", rng.normal(size=(channels, channels)) / 32),
                  const(f"{p}.c2", rng.normal(size=channels) / 8)]
        x = f"{p}_out"
    nodes.append(N("Identity", [x], ["y"]))
    return model(nodes, inits, {"x": ["N", 4, channels]}, {"y": ["N", 4, channels]})


def _idempotence_cases() -> dict[str, onnx.ModelProto]:
    head = [N("MatMul", ["normed", "W"], ["mm"], name="fc"),
            N("Add", ["mm", "c"], ["y"], name="fc_bias")]
    head_inits = [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]
    return {
        "pre_norm_blocks": _pre_norm_chain(3, C),
        "materialized_at_an_output": model(
            NORM + [N("Transpose", ["normed"], ["y"], perm=[0, 2, 1])], norm_constants(C),
            {"x": [2, 5, C]}, {"y": [2, C, 5]}),
        "partial_for_a_relu": model(
            NORM + head + [N("Relu", ["normed"], ["r"], name="act")],
            norm_constants(C) + head_inits, {"x": ["N", 5, C]},
            {"y": ["N", 5, 3], "r": ["N", 5, C]}),
    }


@pytest.mark.parametrize("case", list(_idempotence_cases()))
def test_folding_a_folded_model_changes_nothing(case: str) -> None:
    """What a fold leaves (a materialized Mul/Add is a site again) folds to itself: the same
    graph, text for text."""
    m = _idempotence_cases()[case]
    once, first = fold_model(m)
    twice, second = fold_model(once)
    assert second.ops_after == second.ops_before == first.ops_after
    assert all(s.status != "folded" for s in second.sites), "nothing left to fold"
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)
    assert_same_outputs(m, twice, _x((2, 4, C) if case == "pre_norm_blocks" else (2, 5, C)))


def _best_of_two(m: onnx.ModelProto) -> float:
    """The fold's best time of two, with the garbage collector off while it runs: in a process
    with a large heap (the whole test suite, torch imported) each of its full collections
    scans that heap, which makes any allocating code look superlinear."""
    times = []
    for _ in range(2):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fold_model(m)
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


@pytest.mark.slow
def test_the_fold_takes_time_linear_in_the_graph() -> None:
    """4x the blocks, well under 6x the time (a pass that rescans the graph per site or per
    node would take ~16x)."""
    small, large = _pre_norm_chain(32), _pre_norm_chain(128)
    folded, report = fold_model(large)
    assert {s.status for s in report.sites} == {"folded"} and len(report.sites) == 128
    small_time, large_time = _best_of_two(small), _best_of_two(large)
    assert large_time < 6 * small_time, (small_time, large_time)
    assert large_time < 5.0, large_time
    assert_same_outputs(large, folded, {"x": RNG.normal(size=(2, 4, 16)).astype(np.float32)})


# --- the bound on the carried scale -----------------------------------------------------------

BLOCKS = 6


def _post_norm_stack(norm: bool = True) -> onnx.ModelProto:
    return post_norm_stack(BLOCKS, C, norm=norm)


def _largest_constant(m: onnx.ModelProto) -> float:
    return max(float(np.abs(numpy_helper.to_array(i)).max()) for i in m.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)


def test_without_a_bound_a_shrinking_stream_folds_to_the_twin_with_grown_weights() -> None:
    m = _post_norm_stack()
    folded, report = fold_model(m)
    assert {s.status for s in report.sites} == {"folded"}
    assert [s.merged_into for s in report.sites[1:]] == ["b0_norm_mul"] * (BLOCKS - 1)
    _, twin = fold_model(_post_norm_stack(norm=False))
    assert report.ops_after == twin.ops_after, "no op more than the no-norm twin"
    low, _ = report.sites[0].scale_range
    assert (0.27 ** BLOCKS) <= low <= (0.33 ** BLOCKS), \
        "the carried scale is the product of every norm's (each 0.3 ± 10%)"
    assert _largest_constant(folded) > 4 * _largest_constant(m), \
        "the branches divided by 0.3^k: their biases grow far beyond 4x"
    assert not any("re-scaled" in p for s in report.sites for p in s.path)
    assert_same_outputs(m, folded, _x())


def test_max_scale_re_scales_the_stream_with_one_mul() -> None:
    m = _post_norm_stack()
    folded, report = fold_model(m, max_scale=4.0)
    assert {s.status for s in report.sites} == {"folded"}
    rescaled = [p for s in report.sites for p in s.path if "re-scaled" in p]
    assert rescaled, [s.path for s in report.sites]
    assert all("beyond max_scale=4.0" in p for p in rescaled), rescaled
    _, twin = fold_model(_post_norm_stack(norm=False))
    assert report.ops_after == twin.ops_after + Counter(Mul=len(rescaled)), \
        "one Mul per re-scale, nothing else"
    assert _largest_constant(folded) <= 4 * _largest_constant(m), \
        "no constant grew beyond the bound"
    assert_same_outputs(m, folded, _x())


# --- a constant Mul before the reader that stops a pending ----------------------------------

def _two_scaled_tanhs(norm: bool) -> onnx.ModelProto:
    """A norm read by two DyT-like branches, Mul(α) -> Tanh -> MatMul, summed: kept, the norm
    is a Mul and an Add; carried, each α takes its scale and each branch keeps only an Add of
    the shift before its Tanh: as many ops, one Mul fewer."""
    source = "normed" if norm else "x"
    nodes = [*NORM] if norm else []
    inits = [const("W", RNG.normal(size=(C, 3)))]
    for branch in ("a", "b"):
        nodes += [N("Mul", [source, f"alpha_{branch}"], [f"in_{branch}"],
                    name=f"alpha_mul_{branch}"),
                  N("Tanh", [f"in_{branch}"], [f"t_{branch}"], name=f"tanh_{branch}"),
                  N("MatMul", [f"t_{branch}", "W"], [f"y_{branch}"], name=f"fc_{branch}")]
        inits.append(const(f"alpha_{branch}", np.array(0.7 if branch == "a" else 1.3)))
    nodes.append(N("Add", ["y_a", "y_b"], ["y"], name="sum"))
    if norm:
        inits += norm_constants(C)
    return model(nodes, inits, {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})


def test_a_scale_stopped_after_a_constant_mul_goes_into_that_constant() -> None:
    m = _two_scaled_tanhs(norm=True)
    folded, report = fold_model(m)
    _, twin = fold_model(_two_scaled_tanhs(norm=False))
    assert report.ops_after == twin.ops_after + Counter(Add=2), \
        "each α took the scale: an Add of the shift per branch, no Mul more than the twin"
    assert_same_outputs(m, folded, _x())
    _, second = fold_model(folded)
    assert second.ops_after == report.ops_after, "a second fold finds nothing more to do"


def test_the_decision_prices_the_fold_the_rewrite_does() -> None:
    """The producer cannot take this norm (its weights would overflow float32), a consumer
    can. The decision must know that when it decides, not find out in the rewrite: it once
    priced the producer fold from shapes alone, found it refused only while rewriting, and left
    the norm where it was, with no reader chosen to take it."""
    nodes = [N("Gemm", ["x", "W1", "c1"], ["h"], name="producer"), *[
        N("Mul", ["h", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")],
        N("MatMul", ["normed", "W2"], ["mm"], name="consumer"),
        N("Add", ["mm", "c"], ["y"], name="consumer_bias")]
    inits = [const("W1", np.full((C, C), 1e10)), const("c1", RNG.normal(size=C)),
             const("W2", RNG.normal(size=(C, 3)) * 1e-10), const("c", RNG.normal(size=3)),
             const("norm.scale", RNG.uniform(0.5, 1.5, C) * 1e30),
             const("norm.shift", RNG.normal(size=C))]
    m = model(nodes, inits, {"x": ["N", C]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.absorbed_by == ["consumer"], site
    assert report.ops_after == {"Gemm": 1, "MatMul": 1, "Add": 1}, dict(report.ops_after)
    x = (RNG.normal(size=(2, C)) * 1e-20).astype(np.float32)
    assert_same_outputs(m, folded, {"x": x})


def test_a_move_the_rewrite_cannot_make_is_reported() -> None:
    """The report says where the rewrite, given what the decision planned with, could not do
    what the decision priced (none is expected: the twin and zoo checks assert that); another
    way found instead is no loss and is not reported."""
    from onnx_graphsurgeon import Node

    from unfold.fold.dataflow import _compare, _Log
    from unfold.fold.flow import Move, Stop

    log = _Log()
    fc = Node("MatMul", "fc")
    _compare(fc, Move("consumer-linear", "", (0,)), Stop("its weight is not 2-D"), log)
    _compare(fc, Move("producer", "", ()), Move("start", "", ()), log)
    _compare(fc, Move("compose", "", (0,)), Move("producer", "", (0,)), log)
    _compare(fc, Stop("x"), Move("layout", "", (0,)), log)
    assert log.replanned == [
        "MatMul 'fc': decided by rule 'consumer-linear', rewritten by a stop (its weight is "
        "not 2-D)",
        "MatMul 'fc': decided by rule 'producer', rewritten by rule 'start'"]
