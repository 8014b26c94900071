"""Where the fold starts (unfold/fold/sites.py): what is a norm site and what is not. A site is
an inference-mode BatchNormalization or a chain of Mul/Add/Sub/Div by constants per channel on
ONE axis (last, or axis 1 for channels first); a bias after a linear, scalar-only chains,
position tables and constants that broadcast the data are not; SLAB's RepBN is one site."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper

from unfold.fold import fold_model

from .helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
C = 8
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
HEAD = [N("MatMul", ["normed", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]
BN = ["gamma", "beta", "mean", "var"]


def _head_inits() -> list[onnx.TensorProto]:
    return [const("W", RNG.normal(size=(C, 3))), const("c", RNG.normal(size=3))]


def _bn_inits() -> list[onnx.TensorProto]:
    return [const("gamma", RNG.normal(1, 0.3, C)), const("beta", RNG.normal(size=C)),
            const("mean", RNG.normal(size=C)), const("var", RNG.uniform(0.5, 2, C))]


def _feeds(shape) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


@pytest.mark.parametrize("shape", [(C,), (1, 1, C)], ids=["vector", "rank_3"])
def test_per_channel_constants_on_the_last_axis_are_a_site(shape) -> None:
    m = model(NORM + HEAD, [const("norm.scale", RNG.uniform(0.5, 2, shape)),
                            const("norm.shift", RNG.normal(size=shape))] + _head_inits(),
              {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind, site.channels) == ("norm_mul", "offline affine (Mul/Add)", C)
    assert (site.status, site.absorbed_by) == ("folded", ["head"])
    assert_same_outputs(m, folded, _feeds((2, 5, C)))


def test_per_channel_constants_on_axis_one_are_a_channels_first_site() -> None:
    """(1, C, 1, 1) on NCHW, read by a Conv: the site's channels are axis 1's."""
    m = model(NORM + [N("Conv", ["normed", "K"], ["y"], name="conv", kernel_shape=[1, 1])],
              [const("norm.scale", RNG.uniform(0.5, 2, (1, C, 1, 1))),
               const("norm.shift", RNG.normal(size=(1, C, 1, 1))),
               const("K", RNG.normal(size=(4, C, 1, 1)))],
              {"x": ["N", C, 3, 3]}, {"y": ["N", 4, 3, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.kind, site.channels, site.status) == ("offline affine (Mul/Add)", C, "folded")
    assert report.ops_after == {"Conv": 1}
    assert_same_outputs(m, folded, _feeds((2, C, 3, 3)))


def test_a_batch_norm_in_inference_mode_is_a_site_of_one_node() -> None:
    m = model([N("BatchNormalization", ["x", *BN], ["normed"], name="bn"),
               N("Gemm", ["normed", "W", "c"], ["y"], name="head")],
              _bn_inits() + _head_inits(), {"x": ["N", C]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind, site.channels) == ("bn", "BatchNormalization", C)
    assert (site.status, site.absorbed_by) == ("folded", ["head"])
    assert report.ops_after == {"Gemm": 1}
    assert_same_outputs(m, folded, _feeds((4, C)))


@pytest.mark.parametrize("producer", ["MatMul", "Conv"])
def test_a_bias_add_after_a_linear_is_no_site(producer: str) -> None:
    if producer == "MatMul":
        nodes = [N("MatMul", ["x", "W"], ["lin"])]
        inits, x, bias = [const("W", RNG.normal(size=(C, 4)))], ["N", 5, C], (4,)
    else:
        nodes = [N("Conv", ["x", "K"], ["lin"], kernel_shape=[1, 1])]
        inits, x, bias = [const("K", RNG.normal(size=(4, C, 1, 1)))], ["N", C, 3, 3], \
            (1, 4, 1, 1)
    nodes += [N("Add", ["lin", "bias"], ["z"], name="bias"), N("Relu", ["z"], ["y"])]
    out = ["N", 5, 4] if producer == "MatMul" else ["N", 4, 3, 3]
    m = model(nodes, inits + [const("bias", RNG.normal(size=bias))], {"x": x}, {"y": out})
    folded, report = fold_model(m)
    assert report.sites == []
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds([2 if d == "N" else d for d in x]))


def test_a_per_channel_mul_after_a_linear_bias_is_a_site_without_the_bias() -> None:
    """Conv -> bias Add -> LayerScale Mul: the Mul is a site (into the Conv and its bias), the
    bias Add is not part of it."""
    m = model([N("Conv", ["x", "K"], ["lin"], kernel_shape=[1, 1]),
               N("Add", ["lin", "bias"], ["z"], name="bias"),
               N("Mul", ["z", "gamma"], ["scaled"], name="layer_scale"),
               N("Relu", ["scaled"], ["y"])],
              [const("K", RNG.normal(size=(4, C, 1, 1))),
               const("bias", RNG.normal(size=(1, 4, 1, 1))),
               const("gamma", RNG.uniform(0.1, 1, (1, 4, 1, 1)))],
              {"x": ["N", C, 3, 3]}, {"y": ["N", 4, 3, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind, site.status) == ("layer_scale", "offline affine (Mul)",
                                                   "folded")
    assert report.ops_after == {"Conv": 1, "Add": 1, "Relu": 1}
    assert_same_outputs(m, folded, _feeds((2, C, 3, 3)))


def test_a_chain_of_scalars_is_no_site() -> None:
    """x * 0.5 + 0.1 (attention's scaling, an embedding scale): no channel to fold along."""
    m = model([N("Mul", ["x", "half"], ["a"]), N("Add", ["a", "tenth"], ["b"]),
               N("Relu", ["b"], ["y"])],
              [const("half", np.array(0.5)), const("tenth", np.array([0.1]))],
              {"x": ["N", 5, C]}, {"y": ["N", 5, C]})
    folded, report = fold_model(m)
    assert report.sites == []
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds((2, 5, C)))


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_a_position_table_is_no_site(op: str) -> None:
    """A (1, T, C) constant varies along two axes: with it first, the chain after it (a
    per-channel Mul/Add) is the site, the table's op is not part of it."""
    nodes = [N(op, ["x", "pos"], ["with_pos"], name="pos")] + \
        [N("Mul", ["with_pos", "norm.scale"], ["scaled"], name="norm_mul"), NORM[1]] + HEAD
    m = model(nodes, [const("pos", RNG.normal(size=(1, 5, C)))] + norm_constants(C) +
              _head_inits(), {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.status) == ("norm_mul", "folded"), site
    assert report.ops_after == Counter({op: 1, "MatMul": 1}) + Counter(Add=1), \
        "the table's op, the head and its bias"
    assert_same_outputs(m, folded, _feeds((2, 5, C)))


def test_a_position_table_alone_is_no_site() -> None:
    m = model([N("Mul", ["x", "table"], ["normed"], name="table_mul")] + HEAD,
              [const("table", RNG.normal(size=(1, 5, C)))] + _head_inits(),
              {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(m)
    assert report.sites == []
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds((2, 5, C)))


def test_a_constant_that_broadcasts_the_data_is_no_site() -> None:
    """x (N, 5, 1) * s (1, 1, C) makes (N, 5, C): no per-channel affine of x."""
    m = model(NORM + [N("Relu", ["normed"], ["y"])],
              [const("norm.scale", RNG.uniform(0.5, 2, (1, 1, C))),
               const("norm.shift", RNG.normal(size=(1, 1, C)))],
              {"x": ["N", 5, 1]}, {"y": ["N", 5, C]})
    folded, report = fold_model(m)
    assert report.sites == []
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _feeds((2, 5, 1)))


def _repbn(alpha: np.ndarray, cancelled: bool = False) -> onnx.ModelProto:
    """SLAB's RepBN on tokens: BN(x.transpose(1, 2)).transpose(1, 2) + α·x, then a head. With
    `cancelled`, as an exporter that cancelled x.transpose().transpose() writes it: the input
    R is channels first, the BN reads R and α·x reads x = R.transpose(1, 2)."""
    if cancelled:
        nodes = [N("BatchNormalization", ["R", *BN], ["bn_out"], name="bn"),
                 N("Transpose", ["bn_out"], ["bn_cl"], name="to_cl", perm=[0, 2, 1]),
                 N("Transpose", ["R"], ["x"], name="x_cl", perm=[0, 2, 1])]
        inputs = {"R": ["N", C, 5]}
    else:
        nodes = [N("Transpose", ["x"], ["xt"], name="to_cf", perm=[0, 2, 1]),
                 N("BatchNormalization", ["xt", *BN], ["bn_out"], name="bn"),
                 N("Transpose", ["bn_out"], ["bn_cl"], name="to_cl", perm=[0, 2, 1])]
        inputs = {"x": ["N", 5, C]}
    nodes += [N("Mul", ["x", "alpha"], ["ax"], name="alpha"),
              N("Add", ["bn_cl", "ax"], ["normed"], name="repbn_add")] + HEAD
    return model(nodes, _bn_inits() + [const("alpha", alpha)] + _head_inits(), inputs,
                 {"y": ["N", 5, 3]})


@pytest.mark.parametrize("cancelled", [False, True], ids=["transpose_pair", "cancelled_pair"])
def test_repbn_is_one_site_and_folds_to_nothing(cancelled: bool) -> None:
    """(a + α)⊙x + b on x: one site, named by its BN; the head takes it whole and the
    Transpose pair goes with the BN (where the input is channels first, its Transpose to
    channels last stays: the twin has it too)."""
    m = _repbn(np.array(0.7), cancelled)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind) == ("bn", "RepBN (BatchNormalization + α·x)")
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    expected = {"MatMul": 1, "Add": 1} if not cancelled else \
        {"Transpose": 1, "MatMul": 1, "Add": 1}
    assert report.ops_after == expected, dict(report.ops_after)
    x = RNG.normal(size=(2, C, 5) if cancelled else (2, 5, C)).astype(np.float32)
    assert_same_outputs(m, folded, {"R" if cancelled else "x": x})


def test_repbn_with_a_per_channel_alpha_is_still_one_site() -> None:
    m = _repbn(RNG.uniform(0.5, 1.5, C))
    folded, report = fold_model(m)
    assert [(s.name, s.kind) for s in report.sites] == \
        [("bn", "RepBN (BatchNormalization + α·x)")]
    assert report.sites[0].status == "folded"
    assert report.ops_after == {"MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _feeds((2, 5, C)))


def test_the_authors_div_by_sqrt_form_channels_first_is_one_site() -> None:
    """UN's eval form on NCHW, x / sqrt(ρ + eps) * γ + β with (1, C, 1, 1) constants: the
    constant Sqrt subgraph is folded first, the Div/Mul/Add chain is one site, and nothing of
    it (no Sqrt, no Div) is left once the Conv takes it."""
    nodes = [N("Add", ["rho", "eps"], ["rho_eps"]), N("Sqrt", ["rho_eps"], ["std"]),
             N("Div", ["x", "std"], ["z"], name="norm_div"),
             N("Mul", ["z", "gamma"], ["zg"], name="norm_mul"),
             N("Add", ["zg", "beta"], ["normed"], name="norm_add"),
             N("Conv", ["normed", "K", "B"], ["y"], name="conv", kernel_shape=[1, 1])]
    inits = [const("rho", RNG.uniform(0.5, 2, (1, C, 1, 1))), const("eps", np.array(1e-5)),
             const("gamma", RNG.normal(size=(1, C, 1, 1))),
             const("beta", RNG.normal(size=(1, C, 1, 1))),
             const("K", RNG.normal(size=(4, C, 1, 1))), const("B", RNG.normal(size=4))]
    m = model(nodes, inits, {"x": ["N", C, 3, 3]}, {"y": ["N", 4, 3, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind, site.channels) == ("norm_div",
                                                     "offline affine (Div/Mul/Add)", C)
    assert (site.status, site.absorbed_by) == ("folded", ["conv"])
    assert report.ops_after == {"Conv": 1}
    assert_same_outputs(m, folded, _feeds((2, C, 3, 3)))
