"""Rule 7 (consumer-conv): tokens (N, 16, C) -> norm -> transpose/reshape to (N, C, 4, 4) ->
Conv. Without padding the norm folds whole; with padding only the scale folds and an Add of b/a
stays before the Conv; a depthwise (grouped) Conv too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants, zero_one_scale

N = helper.make_node
C = 8


def _int64(name: str, values) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _tokens_to_conv(pads: list[int], group: int = 1, bias: bool = True) -> onnx.ModelProto:
    conv_inputs = ["grid", "K", "B"] if bias else ["grid", "K"]
    nodes = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
             N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
             N("Transpose", ["normed"], ["channels_first"], perm=[0, 2, 1]),
             N("Reshape", ["channels_first", "grid_shape"], ["grid"]),
             N("Conv", conv_inputs, ["y"], name="conv", kernel_shape=[3, 3], pads=pads,
               group=group)]
    inits = norm_constants(C) + [_int64("grid_shape", [2, C, 4, 4]),
                                 const("K", RNG.normal(size=(C, C // group, 3, 3)))]
    if bias:
        inits.append(const("B", RNG.normal(size=C)))
    side = 2 + pads[0] + pads[2]
    return model(nodes, inits, {"x": [2, 16, C]}, {"y": [2, C, side, side]})


FEEDS = {"x": RNG.normal(size=(2, 16, C)).astype(np.float32)}


@pytest.mark.parametrize(("group", "bias"), [(1, True), (C, False)], ids=["dense", "depthwise"])
def test_folds_whole_into_a_conv_that_pads_nothing(group: int, bias: bool) -> None:
    m = _tokens_to_conv([0, 0, 0, 0], group, bias)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert site.path[-1] == "folded into its reader Conv 'conv'", site.path
    assert site.path[:-1] == ["moved past Transpose (writing 'channels_first')",
                              "moved past Reshape (writing 'grid')"]
    assert not {"Mul", "Add"} & set(report.ops_after), dict(report.ops_after)
    onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(m, folded, FEEDS)


@pytest.mark.parametrize("group", [1, C], ids=["dense", "depthwise"])
def test_a_padding_conv_takes_only_the_scale(group: int) -> None:
    m = _tokens_to_conv([1, 1, 1, 1], group)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "partial"
    assert site.path[-1] == "scale folded into its reader Conv 'conv'", site.path
    assert site.reasons == ["reader Conv 'conv' pads its input: the shift stays as an Add of "
                            "b/a before it (in its bias it would be wrong at the borders)"]
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 1
    assert not report, "--strict: something is left"
    assert_same_outputs(m, folded, FEEDS)


def test_a_padding_conv_with_a_zero_scale_keeps_the_norm() -> None:
    m = _tokens_to_conv([1, 1, 1, 1])
    zero_one_scale(m, 0)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert any("scale is ~0" in r for r in site.reasons), site.reasons
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, FEEDS)


def test_a_conv_whose_channel_axis_is_not_the_norms_is_not_taken() -> None:
    nodes = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
             N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
             N("Reshape", ["normed", "grid_shape"], ["grid"]),
             N("Conv", ["grid", "K"], ["y"], name="conv", kernel_shape=[1, 1])]
    m = model(nodes, norm_constants(C) + [_int64("grid_shape", [2, 4, 4, C]),
                                         const("K", RNG.normal(size=(C, 4, 1, 1)))],
              {"x": [2, 16, C]}, {"y": [2, C, 4, C]})
    folded, report = fold_model(m)
    assert [s.status for s in report.sites] == ["stayed"]
    assert any("not per channel on its input's axis 1" in r for r in report.sites[0].reasons), \
        report.sites[0].reasons
    assert_same_outputs(m, folded, FEEDS)


def test_a_channels_first_norm_before_a_conv_folds_into_it() -> None:
    """(1, C, 1, 1) constants on NCHW (channels-first UN, the authors' form) and a
    BatchNormalization, each read by a Conv: whole into it where it pads nothing."""
    for norm in ([N("Mul", ["x", "s4"], ["scaled"], name="norm_mul"),
                  N("Add", ["scaled", "b4"], ["normed"], name="norm_add")],
                 [N("BatchNormalization", ["x", "gamma", "beta", "mean", "var"], ["normed"],
                    name="bn")]):
        inits = [const("s4", RNG.uniform(0.5, 2, (1, C, 1, 1))),
                 const("b4", RNG.normal(size=(1, C, 1, 1))),
                 const("gamma", RNG.normal(1, 0.3, C)), const("beta", RNG.normal(size=C)),
                 const("mean", RNG.normal(size=C)), const("var", RNG.uniform(0.5, 2, C)),
                 const("K", RNG.normal(size=(4, C, 2, 2)))]
        nodes = norm + [N("Conv", ["normed", "K"], ["y"], name="conv", kernel_shape=[2, 2],
                          strides=[2, 2])]
        used = {i for n in nodes for i in n.input}
        m = model(nodes, [i for i in inits if i.name in used], {"x": ["N", C, 4, 4]},
                  {"y": ["N", 4, 2, 2]})
        folded, report = fold_model(m)
        (site,) = report.sites
        assert site.status == "folded" and site.absorbed_by == ["conv"], site
        assert dict(report.ops_after) == {"Conv": 1}
        assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, C, 4, 4)).astype(np.float32)})
