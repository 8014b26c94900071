"""select: a norm moves past Gather, Slice and Split, its constants selected with the data.
Along the tokens (where the affine is constant) the indices and bounds need not be constant;
along the channels they must be, and the affine is permuted, cut or split with them."""

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


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _head(source: str, name: str = "head", out: str = "y", rows: int = C) -> tuple[list, list]:
    """MatMul `name` + bias reading `source`, writing `out`: its nodes and constants."""
    nodes = [N("MatMul", [source, f"{name}.W"], [f"{name}_mm"], name=name),
             N("Add", [f"{name}_mm", f"{name}.c"], [out], name=f"{name}_bias")]
    return nodes, [const(f"{name}.W", RNG.normal(size=(rows, 3))),
                   const(f"{name}.c", RNG.normal(size=3))]


def _x(shape=(2, 5, C)) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


def _select_then_head(select: list, extra: list, y_shape: list, rows: int = C,
                      inputs: dict | None = None) -> onnx.ModelProto:
    head, head_inits = _head("selected", rows=rows)
    return model(NORM + select + head, norm_constants(C) + extra + head_inits,
                 inputs or {"x": ["N", 5, C]}, {"y": y_shape})


def _folded_into_the_head(report, steps: int) -> None:
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("folded", ["head"]), site
    assert len(site.path) == steps, site.path
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 1, \
        dict(report.ops_after)


def test_gather_of_the_cls_token_with_a_constant_index() -> None:
    m = _select_then_head([N("Gather", ["normed", "zero"], ["selected"], name="cls", axis=1)],
                          [_int64("zero", 0)], ["N", 3])
    folded, report = fold_model(m)
    _folded_into_the_head(report, 1)
    assert report.sites[0].path == ["moved past Gather 'cls'"]
    assert_same_outputs(m, folded, _x())


def test_gather_of_a_token_chosen_at_run_time() -> None:
    """The index is the ArgMax of a score per token (token selection): not constant, but the
    affine is the same for every token, so any index takes the same constants."""
    nodes = [N("ArgMax", ["scores"], ["best"], axis=0, keepdims=0),
             N("Gather", ["normed", "best"], ["selected"], name="pick", axis=1)]
    m = _select_then_head(nodes, [], ["N", 3], inputs={"x": ["N", 5, C], "scores": [5]})
    folded, report = fold_model(m)
    _folded_into_the_head(report, 1)
    assert_same_outputs(m, folded, {**_x(), "scores": RNG.normal(size=5).astype(np.float32)})


@pytest.mark.parametrize("indices", [[3, 1, 0, 2, 7, 6, 5, 4], [-1, 0, 2, 2]],
                         ids=["permutation", "subset_with_negative_indices"])
def test_gather_along_the_channels_permutes_the_affine(indices: list[int]) -> None:
    """Channel shuffle: the constants are gathered with the channels (a negative index counts
    from the end of the static channel axis), and the head's rows take them."""
    m = _select_then_head([N("Gather", ["normed", "idx"], ["selected"], name="shuffle",
                             axis=2)],
                          [_int64("idx", indices)], ["N", 5, 3], rows=len(indices))
    folded, report = fold_model(m)
    _folded_into_the_head(report, 1)
    assert_same_outputs(m, folded, _x())


def test_gather_along_the_channels_with_indices_chosen_at_run_time_stops_it() -> None:
    nodes = [N("ArgMax", ["scores"], ["best"], axis=0, keepdims=1),
             N("Gather", ["normed", "best"], ["selected"], name="pick", axis=2)]
    m = _select_then_head(nodes, [], ["N", 5, 3], rows=1,
                          inputs={"x": ["N", 5, C], "scores": [C]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Gather 'pick': Gather changes the axes the affine lives "
                            "on in a way it cannot follow"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, {**_x(), "scores": RNG.normal(size=C).astype(np.float32)})


@pytest.mark.parametrize(("axis", "rows", "y_shape"), [(1, C, ["N", 3, 3]), (2, 3, ["N", 5, 3])],
                         ids=["tokens", "channels"])
def test_slice_with_constant_bounds(axis: int, rows: int, y_shape: list) -> None:
    """[:, 1:4] of the tokens (the same affine), or [..., 2:5] of the channels (the affine
    cut to channels 2..4, which the head's 3 rows take)."""
    m = _select_then_head([N("Slice", ["normed", "starts", "ends", "axes"], ["selected"],
                             name="crop")],
                          [_int64("starts", [1 if axis == 1 else 2]),
                           _int64("ends", [4 if axis == 1 else 5]), _int64("axes", [axis])],
                          y_shape, rows=rows)
    folded, report = fold_model(m)
    _folded_into_the_head(report, 1)
    assert report.sites[0].path == ["moved past Slice 'crop'"]
    assert_same_outputs(m, folded, _x())


def _slice_to_the_token_count() -> list:
    """[0:T] along the axis `_bounds` gives, T the input's (dynamic) token count: bounds
    known at run time only."""
    return [N("Shape", ["x"], ["x_shape"]), N("Slice", ["x_shape", "one", "two"], ["tokens"]),
            N("Slice", ["normed", "zero", "tokens", "axes"], ["selected"], name="crop")]


def _bounds(axis: int) -> list:
    return [_int64("zero", [0]), _int64("one", [1]), _int64("two", [2]),
            _int64("axes", [axis])]


def test_slice_of_the_tokens_with_bounds_known_at_run_time_passes() -> None:
    m = _select_then_head(_slice_to_the_token_count(), _bounds(1), ["N", None, 3],
                          inputs={"x": ["N", "T", C]})
    folded, report = fold_model(m)
    _folded_into_the_head(report, 1)
    assert_same_outputs(m, folded, _x())


def test_slice_of_the_channels_with_bounds_known_at_run_time_stops_it() -> None:
    m = model(NORM + _slice_to_the_token_count() + [N("Relu", ["selected"], ["y"])],
              norm_constants(C) + _bounds(2), {"x": ["N", "T", C]}, {"y": ["N", "T", None]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert site.reasons == ["reader Slice 'crop': its starts or ends are not constant, along "
                            "an axis the affine varies along"]
    assert report.ops_after == report.ops_before
    assert_same_outputs(m, folded, _x())


def test_split_along_the_channels_splits_the_affine_between_two_heads() -> None:
    """A 3/5 channel split: each part takes its own channels' constants, each head folds."""
    heads = [_head(part, f"head_{part}", f"y_{part}", rows) for part, rows in (("a", 3),
                                                                              ("b", 5))]
    m = model(NORM + [N("Split", ["normed", "sizes"], ["a", "b"], name="split", axis=2)] +
              heads[0][0] + heads[1][0],
              norm_constants(C) + [_int64("sizes", [3, 5])] + heads[0][1] + heads[1][1],
              {"x": ["N", 5, C]}, {"y_a": ["N", 5, 3], "y_b": ["N", 5, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and sorted(site.absorbed_by) == ["head_a", "head_b"], site
    assert site.path == ["moved past Split 'split' (split with it)"]
    assert report.ops_after == {"Split": 1, "MatMul": 2, "Add": 2}
    assert_same_outputs(m, folded, _x())


def test_split_along_the_tokens_gives_both_parts_the_whole_affine() -> None:
    """The first token and the rest (a cls head and a patch head): the affine is the same."""
    heads = [_head(part, f"head_{part}", f"y_{part}") for part in ("a", "b")]
    m = model(NORM + [N("Split", ["normed", "sizes"], ["a", "b"], name="split", axis=1)] +
              heads[0][0] + heads[1][0],
              norm_constants(C) + [_int64("sizes", [1, 4])] + heads[0][1] + heads[1][1],
              {"x": ["N", 5, C]}, {"y_a": ["N", 1, 3], "y_b": ["N", 4, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and sorted(site.absorbed_by) == ["head_a", "head_b"], site
    assert site.path == ["moved past Split 'split'"]
    assert report.ops_after == {"Split": 1, "MatMul": 2, "Add": 2}
    assert_same_outputs(m, folded, _x())


def test_a_distillation_token_both_heads_take_the_final_norm() -> None:
    """DeiT: the final norm, then the cls token (0) to the head and the distillation token (1)
    to head_dist; each Gather carries the affine and each head folds its own copy."""
    cls_head, cls_inits = _head("cls", "head", "y")
    dist_head, dist_inits = _head("dist", "head_dist", "y_dist")
    m = model(NORM + [N("Gather", ["normed", "zero"], ["cls"], name="cls_token", axis=1),
                      N("Gather", ["normed", "one"], ["dist"], name="dist_token", axis=1)] +
              cls_head + dist_head,
              norm_constants(C) + [_int64("zero", 0), _int64("one", 1)] + cls_inits +
              dist_inits, {"x": ["N", 5, C]}, {"y": ["N", 3], "y_dist": ["N", 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and sorted(site.absorbed_by) == ["head", "head_dist"], site
    assert sorted(site.path) == ["moved past Gather 'cls_token'",
                                 "moved past Gather 'dist_token'"]
    assert report.ops_after == {"Gather": 2, "MatMul": 2, "Add": 2}, "what the twin has"
    assert_same_outputs(m, folded, _x())
