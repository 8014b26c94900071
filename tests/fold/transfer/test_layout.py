"""Layout, selection and pooling transfers: a norm moves past ops that move its channels
around (its constants moved with them), then folds into what reads it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
NORM = [N("Mul", ["x", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add")]
HEAD = [N("MatMul", ["moved", "W"], ["mm"], name="head"), N("Add", ["mm", "c"], ["y"])]


def _head_inits(channels: int = 8) -> list:
    return norm_constants(channels) + [const("W", RNG.normal(size=(channels, 3))),
                                       const("c", RNG.normal(size=3))]


def _case(between, extra, out_shape, x_shape=("N", 5, 8)):
    return model(NORM + between + HEAD, _head_inits() + extra, {"x": list(x_shape)},
                 {"y": out_shape})


def _int64(name: str, values) -> object:
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


CASES = {
    "gather_cls_token": ([N("Gather", ["normed", "zero"], ["moved"], axis=1)],
                         [_int64("zero", 0)], ["N", 3]),
    "token_mean_pooling": ([N("ReduceMean", ["normed"], ["moved"], axes=[1], keepdims=0)],
                           [], ["N", 3]),
    "reshape_keeps_channels_last": ([N("Reshape", ["normed", "shape"], ["moved"])],
                                    [_int64("shape", [-1, 8])], [None, 3]),
    "transpose_keeps_last_axis": ([N("Transpose", ["normed"], ["moved"], perm=[1, 0, 2])],
                                  [], [5, "N", 3]),
    "slice_tokens_then_identity": ([N("Slice", ["normed", "s", "e", "ax"], ["sl"]),
                                    N("Identity", ["sl"], ["moved"])],
                                   [_int64("s", [1]), _int64("e", [4]), _int64("ax", [1])],
                                   ["N", 3, 3]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_moves_then_folds_into_the_head(case: str) -> None:
    between, extra, out_shape = CASES[case]
    m = _case(between, extra, out_shape)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert site.absorbed_by == ["head"]
    assert len(site.path) == len(between)
    assert "Mul" not in report.ops_after, f"the norm's Mul is left: {dict(report.ops_after)}"
    assert report.ops_after["Add"] == 1, "only the head's bias Add is left"
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)})


FOLLOWED = {  # the channel axis moves; the affine follows it, and the head still takes it
    "transpose_moves_channels": (
        [N("Transpose", ["normed"], ["t"], perm=[0, 2, 1]),
         N("Transpose", ["t"], ["moved"], perm=[0, 2, 1])], []),
    "gather_permutes_channels": (
        [N("Gather", ["normed", "idx"], ["moved"], axis=2)],
        [_int64("idx", [7, 6, 5, 4, 3, 2, 1, 0])]),
    "reshape_splits_and_merges_channels": (
        [N("Reshape", ["normed", "split"], ["heads"]),
         N("Reshape", ["heads", "merged"], ["moved"])],
        [_int64("split", [0, 0, 2, 4]), _int64("merged", [0, 0, 8])]),
}


@pytest.mark.parametrize("case", list(FOLLOWED))
def test_follows_ops_that_move_the_channel_axis(case: str) -> None:
    between, extra = FOLLOWED[case]
    m = _case(between, extra, ["N", 5, 3])
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.absorbed_by == ["head"], site.reasons
    assert len(site.path) == len(between)
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 1
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)})


def test_a_norm_moved_away_from_its_channels_is_materialized_once_where_it_stops() -> None:
    """Channels moved to axis 1, then a Relu: the norm stays (a Mul and an Add) wherever it
    ends; nothing absorbed it, so it is reported as stayed, with the Relu's reason."""
    m = model(NORM + [N("Transpose", ["normed"], ["t"], perm=[0, 2, 1]),
                      N("Relu", ["t"], ["y"], name="act")],
              norm_constants(8), {"x": [2, 5, 8]}, {"y": [2, 8, 5]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Relu 'act': Relu does not commute with a shift"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 8)).astype(np.float32)})


MERGES = {
    "reshape_two_tokens_side_by_side": (
        [N("Reshape", ["normed", "shape"], ["moved"])], [_int64("shape", [0, 2, 16])],
        ["N", 4, 8], ["N", 2, 3]),
    "flatten_tokens_and_channels": (
        [N("Flatten", ["normed"], ["moved"], axis=1)], [], ["N", 2, 8], ["N", 3]),
    "torch_flatten_idiom_with_a_dynamic_batch": (  # x.flatten(2): Concat(Shape(x)[:2], [-1])
        [N("Shape", ["normed"], ["shape"]), N("Slice", ["shape", "s", "e"], ["head_dims"]),
         N("Concat", ["head_dims", "minus_one"], ["target"], axis=0),
         N("Reshape", ["normed", "target"], ["moved"])],
        [_int64("s", [0]), _int64("e", [2]), _int64("minus_one", [-1])],
        ["N", 3, 2, 8], ["N", 3, 3]),
}


@pytest.mark.parametrize("case", list(MERGES))
def test_moves_past_a_merge_of_channel_vectors_with_the_affine_tiled(case: str) -> None:
    """Patch merging: k channel vectors side by side on the last axis take a and b tiled."""
    between, extra, x_shape, out_shape = MERGES[case]
    inits = norm_constants(8) + [const("W", RNG.normal(size=(16, 3))),
                                 const("c", RNG.normal(size=3))] + extra
    m = model(NORM + between + HEAD, inits, {"x": x_shape}, {"y": out_shape})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert "(2 channel vectors side by side)" in site.path[0], site.path
    assert site.absorbed_by == ["head"]
    assert report.ops_after["Mul"] == 0 and report.ops_after["Add"] == 1
    x = RNG.normal(size=[3 if d == "N" else d for d in x_shape]).astype(np.float32)
    assert_same_outputs(m, folded, {"x": x})


def test_a_reshape_that_cuts_channel_vectors_writes_the_affine_out_whole() -> None:
    """(2, 3, 8) -> (2, 2, 12): channel j of an output row is not j mod 8 for every row, so
    the affine becomes a (2, 12) constant: exact, and at the graph output it is materialized
    as that (one Mul, one Add: what the norm was)."""
    m = model(NORM + [N("Reshape", ["normed", "shape"], ["moved"], name="merge")],
              norm_constants(8) + [_int64("shape", [0, 2, 12])], {"x": [2, 3, 8]},
              {"moved": [2, 2, 12]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "materialized"
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 3, 8)).astype(np.float32)})


def test_a_reshape_over_an_unknown_dim_the_affine_varies_along_stops_it() -> None:
    """Channels merged with a dynamic dim: no constant can say which channel lands where."""
    m = model(NORM + [N("Reshape", ["normed", "shape"], ["moved"], name="merge"),
                      N("Relu", ["moved"], ["y"], name="act")],
              norm_constants(8) + [_int64("shape", [-1])], {"x": ["N", 3, 8]},
              {"y": [None]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert any("cannot follow" in r for r in site.reasons), site.reasons
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 3, 8)).astype(np.float32)})
