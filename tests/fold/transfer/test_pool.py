"""pool: averaging over axes the affine is constant along commutes with it (the weights sum to
one), summing scales the shift by the count, max pooling commutes with a positive scale. Token
pooling before a head, a channels-first classifier's global average pool, a ConvNet's pools."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
C = 8
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
HEAD = [N("MatMul", ["pooled", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _head_inits() -> list[onnx.TensorProto]:
    return [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]


def _x(shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


@pytest.mark.parametrize("keepdims", [0, 1])
def test_mean_over_the_tokens_then_the_head(keepdims: int) -> None:
    m = model(NORM + [N("ReduceMean", ["normed"], ["pooled"], name="pool", axes=[1],
                        keepdims=keepdims)] + HEAD,
              norm_constants(C) + _head_inits(), {"x": ["N", 5, C]},
              {"y": ["N", 3] if keepdims == 0 else ["N", 1, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past ReduceMean 'pool'"]
    assert report.ops_after == {"ReduceMean": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_mean_over_the_channels_stops_it() -> None:
    m = model(NORM + [N("ReduceMean", ["normed"], ["pooled"], name="pool", axes=[2]),
                      N("Relu", ["pooled"], ["y"])],
              norm_constants(C), {"x": ["N", 5, C]}, {"y": ["N", 5, 1]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader ReduceMean 'pool': it mixes values the scale treats "
                            "differently (the scale varies along a reduced axis)"]
    assert_same_outputs(m, folded, _x())


def test_global_average_pool_then_flatten_and_gemm_head() -> None:
    """A channels-first norm (1, C, 1, 1) on NCHW, GlobalAveragePool, Flatten, Gemm (transB):
    the affine moves past the pool and the Flatten and folds into the Gemm's columns."""
    nodes = [N("Mul", ["x", "s4"], ["scaled"], name="norm_mul"),
             N("Add", ["scaled", "b4"], ["normed"], name="norm_add"),
             N("GlobalAveragePool", ["normed"], ["g"], name="gap"),
             N("Flatten", ["g"], ["f"], name="flat", axis=1),
             N("Gemm", ["f", "Wg", "cg"], ["y"], name="head", transB=1)]
    m = model(nodes, [const("s4", RNG.uniform(0.5, 2, (1, C, 1, 1))),
                      const("b4", RNG.normal(size=(1, C, 1, 1))),
                      const("Wg", RNG.normal(size=(3, C))), const("cg", RNG.normal(size=3))],
              {"x": ["N", C, 4, 4]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past GlobalAveragePool 'gap'", "moved past Flatten 'flat'"]
    assert report.ops_after == {"GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert_same_outputs(m, folded, _x((2, C, 4, 4)))


def test_a_sum_over_the_tokens_scales_the_shift_by_their_count() -> None:
    """sum_t(s⊙x_t + b) = s⊙sum_t(x) + 5·b: the head's bias takes 5·(b @ W); were it given
    b @ W only, the outputs would differ by 4·(b @ W)."""
    m = model(NORM + [N("ReduceSum", ["normed", "axes"], ["pooled"], name="pool",
                        keepdims=0)] + HEAD,
              norm_constants(C) + [_int64("axes", [1])] + _head_inits(),
              {"x": ["N", 5, C]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert report.ops_after == {"ReduceSum": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_a_sum_over_tokens_of_unknown_count_stops_a_shift() -> None:
    m = model(NORM + [N("ReduceSum", ["normed", "axes"], ["pooled"], name="pool",
                        keepdims=0)] + HEAD,
              norm_constants(C) + [_int64("axes", [1])] + _head_inits(),
              {"x": ["N", "T", C]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader ReduceSum 'pool': it sums over axes of unknown size (the "
                            "shift grows with the count)"]
    assert_same_outputs(m, folded, _x())


def test_a_sum_over_tokens_of_unknown_count_passes_a_pure_scale() -> None:
    m = model([N("Div", ["x", "rho"], ["normed"], name="norm_div"),
               N("ReduceSum", ["normed", "axes"], ["pooled"], name="pool", keepdims=0)] + HEAD,
              [const("rho", RNG.uniform(0.5, 2, C)), _int64("axes", [1])] + _head_inits(),
              {"x": ["N", "T", C]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert report.ops_after == {"ReduceSum": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def _pooled_conv(pool: onnx.NodeProto, scale: np.ndarray, shift: bool = True
                 ) -> onnx.ModelProto:
    """NCHW x -> channels-first norm (a Mul, and an Add unless `shift` is False) -> `pool`
    (writing 'pooled') -> 1x1 Conv 'conv'."""
    nodes = [N("Mul", ["x", "s4"], ["scaled" if shift else "normed"], name="norm_mul")]
    inits = [const("s4", scale), const("K", RNG.normal(size=(3, 4, 1, 1))),
             const("B", RNG.normal(size=3))]
    if shift:
        nodes.append(N("Add", ["scaled", "b4"], ["normed"], name="norm_add"))
        inits.append(const("b4", RNG.normal(size=(1, 4, 1, 1))))
    nodes += [pool, N("Conv", ["pooled", "K", "B"], ["y"], name="conv", kernel_shape=[1, 1])]
    return model(nodes, inits, {"x": ["N", 4, 6, 6]}, {"y": ["N", 3, None, None]})


def _positive() -> np.ndarray:
    return RNG.uniform(0.5, 2, (1, 4, 1, 1))


MAX_POOL = N("MaxPool", ["normed"], ["pooled"], name="pool", kernel_shape=[3, 3],
             strides=[2, 2], pads=[1, 1, 1, 1])


def test_max_pool_passes_a_positive_scale_and_its_shift() -> None:
    """max(s⊙x + b) = s⊙max(x) + b per channel for s > 0 (its padding is never the max)."""
    m = _pooled_conv(MAX_POOL, _positive())
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["conv"]), site
    assert site.path == ["moved past MaxPool 'pool'", "folded into its reader Conv 'conv'"]
    assert report.ops_after == {"MaxPool": 1, "Conv": 1}
    assert_same_outputs(m, folded, _x((2, 4, 6, 6)))


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_max_pool_stops_a_negative_scale(op: str) -> None:
    """A negative scale turns the max into a min on its channel."""
    scale = _positive()
    scale[0, 1] = -0.7
    pool = MAX_POOL if op == "MaxPool" else N("GlobalMaxPool", ["normed"], ["pooled"],
                                               name="pool")
    m = _pooled_conv(pool, scale)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == [f"reader {op} 'pool': max pooling commutes with a positive scale "
                            f"only"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x((2, 4, 6, 6)))


@pytest.mark.parametrize(("count_include_pad", "shift", "passes"),
                         [(0, True, True), (1, False, True), (1, True, False)],
                         ids=["padding_left_out", "padding_counted_pure_scale",
                              "padding_counted_with_a_shift"])
def test_average_pool_with_padding(count_include_pad: int, shift: bool, passes: bool) -> None:
    """Padded 3x3 average pooling: without the padding in the count every window's weights
    sum to one (the shift passes); with it, border windows average zeros in, which a shift
    does not cover (a pure scale still passes: s⊙0 = 0)."""
    pool = N("AveragePool", ["normed"], ["pooled"], name="pool", kernel_shape=[3, 3],
             pads=[1, 1, 1, 1], count_include_pad=count_include_pad)
    m = _pooled_conv(pool, _positive(), shift)
    folded, report = fold_model(m)
    (site,) = report.sites
    if passes:
        assert (site.status, site.absorbed_by) == ("folded", ["conv"]), site
        assert report.ops_after == {"AveragePool": 1, "Conv": 1}
    else:
        assert site.status == "stayed"
        assert site.reasons == ["reader AveragePool 'pool': it averages its zero padding in, "
                                "which the shift does not cover"]
        assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x((2, 4, 6, 6)))
