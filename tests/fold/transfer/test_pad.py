"""pad: a norm moves past a Pad that pads nothing, past zero padding (the scale exact, the shift
padded with zeros: a per-position constant a later linear takes as its bias), and past
reflect/edge padding along axes its affine is constant along; a non-zero pad value, pads that
are not constant, or copying padding across the channels stop it."""

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
HEAD = [N("MatMul", ["padded", "W"], ["mm"], name="head"),
        N("Add", ["mm", "c"], ["y"], name="head_bias")]


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _x(shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


def _padded_head(pad: onnx.NodeProto, extra: list, x_shape: list, y_shape: list,
                 rows: int = C) -> onnx.ModelProto:
    """x -> norm -> `pad` (writing 'padded') -> MatMul 'head' + bias."""
    inits = norm_constants(C) + extra + [const("W", RNG.normal(size=(rows, 3))),
                                         const("c", RNG.normal(size=3))]
    return model(NORM + [pad] + HEAD, inits, {"x": x_shape}, {"y": y_shape})


def _constant_of(folded: onnx.ModelProto, node_name: str) -> np.ndarray:
    """The constant input of the folded graph's node `node_name`."""
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    node = next(n for n in folded.graph.node if n.name == node_name)
    (value,) = [inits[i] for i in node.input if i in inits]
    return value


def test_pads_that_are_all_zero_change_nothing() -> None:
    """Swin's window padding when the size divides: the norm moves past and folds whole."""
    m = _padded_head(N("Pad", ["normed", "pads"], ["padded"], name="pad"),
                     [_int64("pads", [0] * 6)], ["N", 5, C], ["N", 5, 3])
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past Pad 'pad' (its pads are all zero)"]
    assert report.ops_after == {"Pad": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize("value", [None, 0.0], ids=["default_value", "explicit_zero"])
def test_zero_padding_along_tokens_leaves_the_head_a_per_position_bias(value) -> None:
    """(2, 5, C) padded to (2, 8, C) with zeros: the scale folds into the head's weight, the
    shift becomes zero on the 3 padded tokens, so b @ W is a bias per position: (8, 3)."""
    inputs = ["normed", "pads"] + (["zero"] if value is not None else [])
    extra = [_int64("pads", [0, 1, 0, 0, 2, 0])] + \
        ([const("zero", np.array(value))] if value is not None else [])
    m = _padded_head(N("Pad", inputs, ["padded"], name="pad"), extra, [2, 5, C], [2, 8, 3])
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past Pad 'pad' (the shift is zero at the padding)"]
    assert report.ops_after == {"Pad": 1, "MatMul": 1, "Add": 1}, "what the twin has"
    bias = _constant_of(folded, "head_bias")
    assert bias.shape[-2:] == (8, 3), "one bias row per (padded) position"
    original_bias = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "c"))
    for row in (0, 6, 7):  # the padding: the shift is zero there, only the old bias is left
        assert np.allclose(bias.reshape(8, 3)[row], original_bias, atol=1e-6), row
    assert not np.allclose(bias.reshape(8, 3)[1], original_bias), "a real token has b @ W"
    assert_same_outputs(m, folded, _x())


def test_zero_padding_given_by_axes_opset_18() -> None:
    """Pad-18's `axes` input: the pads name the token axis only."""
    m = model(NORM + [N("Pad", ["normed", "pads", "", "axes"], ["padded"], name="pad")] + HEAD,
              norm_constants(C) + [_int64("pads", [1, 2]), _int64("axes", [1]),
                                   const("W", RNG.normal(size=(C, 3))),
                                   const("c", RNG.normal(size=3))],
              {"x": [2, 5, C]}, {"y": [2, 8, 3]}, opset=18)
    folded, report = fold_model(m)
    assert report.sites[0].status == "folded", report.sites[0]
    assert report.ops_after == {"Pad": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_a_non_zero_pad_value_stops_it() -> None:
    """Padding with 1.5: s⊙x + b padded with 1.5 is not s⊙pad(x) + pad(b) for any pad of x
    that is the same for every channel."""
    m = _padded_head(N("Pad", ["normed", "pads", "value"], ["padded"], name="pad"),
                     [_int64("pads", [0, 1, 0, 0, 2, 0]), const("value", np.array(1.5))],
                     [2, 5, C], [2, 8, 3])
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Pad 'pad': it pads with 1.5, not 0"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_copying_padding_along_tokens_passes_the_affine_unchanged(mode: str) -> None:
    """Reflect and edge padding copy elements of the same channel: exact where the affine is
    constant along the padded axis (the tokens), and nothing of it changes."""
    m = _padded_head(N("Pad", ["normed", "pads"], ["padded"], name="pad", mode=mode),
                     [_int64("pads", [0, 1, 0, 0, 2, 0])], [2, 5, C], [2, 8, 3])
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert site.path == ["moved past Pad 'pad'"]
    assert _constant_of(folded, "head_bias").shape == (3,), "no per-position bias needed"
    assert report.ops_after == {"Pad": 1, "MatMul": 1, "Add": 1}
    assert_same_outputs(m, folded, _x())


def test_copying_padding_across_the_channels_stops_it() -> None:
    """Edge padding of the channel axis copies channels 0 and 7 into two new ones: the affine
    varies along the padded axis, which DESIGN's pad rule does not follow. It stops there,
    and says why."""
    m = _padded_head(N("Pad", ["normed", "pads"], ["padded"], name="pad", mode="edge"),
                     [_int64("pads", [0, 0, 1, 0, 0, 1])], [2, 5, C], [2, 5, 3], rows=C + 2)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Pad 'pad': edge padding copies border elements along an "
                            "axis the affine varies along"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())


def test_pads_that_are_not_constant_stop_it() -> None:
    """The pads computed at run time (as the TorchScript exporter writes a window padding for
    a dynamic size): here as many tokens again as the input has, at the end."""
    nodes = NORM + [N("Shape", ["x"], ["x_shape"]),
                    N("Slice", ["x_shape", "one", "two"], ["tokens"]),
                    N("Concat", ["four_zeros", "tokens", "zero"], ["pads"], axis=0),
                    N("Pad", ["normed", "pads"], ["padded"], name="pad")] + HEAD
    inits = norm_constants(C) + [_int64("one", [1]), _int64("two", [2]),
                                 _int64("four_zeros", [0, 0, 0, 0]), _int64("zero", [0]),
                                 const("W", RNG.normal(size=(C, 3))),
                                 const("c", RNG.normal(size=3))]
    m = model(nodes, inits, {"x": ["N", "T", C]}, {"y": ["N", None, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Pad 'pad': its pads are not constant"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())


def test_a_zero_pad_before_a_conv_leaves_one_add_like_the_convs_own_padding() -> None:
    """Conv(Pad0(s⊙x + b)) = Conv_{W·s}(Pad0(x + b⊘s)): the same algebra as rule 7 for a Conv
    with pads; the scale folds into the Conv and one Add stays (before the Pad)."""
    nodes = [N("Mul", ["x", "s4"], ["scaled"], name="norm_mul"),
             N("Add", ["scaled", "b4"], ["normed"], name="norm_add"),
             N("Pad", ["normed", "pads"], ["padded"], name="pad"),
             N("Conv", ["padded", "K", "B"], ["y"], name="conv", kernel_shape=[3, 3])]
    inits = [const("s4", RNG.uniform(0.5, 2, (1, C, 1, 1))),
             const("b4", RNG.normal(size=(1, C, 1, 1))),
             _int64("pads", [0, 0, 1, 1, 0, 0, 1, 1]),
             const("K", RNG.normal(size=(4, C, 3, 3))), const("B", RNG.normal(size=4))]
    m = model(nodes, inits, {"x": ["N", C, 4, 4]}, {"y": ["N", 4, 4, 4]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("partial", ["conv"]), site
    assert report.ops_after == {"Add": 1, "Pad": 1, "Conv": 1}, dict(report.ops_after)
    assert_same_outputs(m, folded, _x((2, C, 4, 4)))
