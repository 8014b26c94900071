"""The tidy-up after the pass (unfold/fold/cleanup.py): what a folded norm leaves of the layout
ops around it goes, to a fixpoint (the authors' UN1d wraps its affine in permute, reshape,
unsqueeze | reshape, permute); and a norm whose own layout ops outlive it is reported as left,
naming them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import unfold.fold.cleanup
from unfold.fold import fold_model

from .helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
B, T, C = 2, 5, 8


def _un1d_then_linear(batch: int | str = B) -> onnx.ModelProto:
    """(B, T, C) -> permute(0, 2, 1) -> reshape(B, C, -1) -> unsqueeze(-1) -> Mul/Add by
    (1, C, 1, 1) constants -> reshape(B, C, T) -> permute back -> MatMul."""
    nodes = [N("Transpose", ["x"], ["p"], perm=[0, 2, 1], name="permute"),
             N("Reshape", ["p", "flat"], ["r"], name="reshape"),
             N("Unsqueeze", ["r", "last"], ["u"], name="unsqueeze"),
             N("Mul", ["u", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("Reshape", ["n", "back"], ["b"], name="reshape_back"),
             N("Transpose", ["b"], ["q"], perm=[0, 2, 1], name="permute_back"),
             N("MatMul", ["q", "W"], ["y"], name="fc")]
    scale, shift = (c for c in norm_constants(C))
    inits = [const("norm.scale", onnx.numpy_helper.to_array(scale).reshape(1, C, 1, 1)),
             const("norm.shift", onnx.numpy_helper.to_array(shift).reshape(1, C, 1, 1)),
             onnx.numpy_helper.from_array(np.array([0, C, -1], np.int64), "flat"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"),
             onnx.numpy_helper.from_array(np.array([0, C, -1], np.int64), "back"),
             const("W", RNG.normal(size=(C, 3)))]
    return model(nodes, inits, {"x": [batch, T, C]}, {"y": [batch, T, 3]})


@pytest.mark.parametrize("batch", [B, "batch"])
def test_the_authors_layout_around_a_norm_goes_with_it(batch) -> None:
    m = _un1d_then_linear(batch)
    folded, report = fold_model(m)
    # the shift becomes the bias-less MatMul's bias, at the graph output
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]
    (site,) = report.sites
    assert site.status in ("folded", "materialized") and not site.layout_left
    assert report.to_dict()["no_norm_left"]
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(B, T, C)).astype(np.float32)})


def test_a_norms_layout_ops_that_stay_count_as_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the step that drops a reshape to its own shape, Transpose -> Reshape ->
    Transpose would stay: the report must say so, not 'folded'."""
    monkeypatch.setattr(unfold.fold.cleanup, "_drop_identity_reshapes", lambda graph: None)
    folded, report = fold_model(_un1d_then_linear())
    (site,) = report.sites
    assert site.status == "partial"
    assert site.layout_left == ["Transpose 'permute'", "Reshape 'reshape'",
                                "Transpose 'permute_back'"]
    assert any("its layout ops stay" in reason for reason in site.reasons)
    assert report.to_dict()["no_norm_left"] is False


def test_layout_ops_that_do_not_undo_each_other_are_not_a_norms() -> None:
    """A norm between x.transpose(1, 2) and a head split's reshape: the two do not compose to
    the identity, so they are the model's own, and stay without blame."""
    nodes = [N("Transpose", ["x"], ["p"], perm=[0, 2, 1]),
             N("Mul", ["p", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("Reshape", ["n", "heads"], ["y"], name="heads")]
    scale, shift = (onnx.numpy_helper.to_array(c) for c in norm_constants(T))
    m = model(nodes, [const("norm.scale", scale), const("norm.shift", shift),
                      onnx.numpy_helper.from_array(np.array([B, 2, 4, T], np.int64), "heads")],
              {"x": [B, T, C]}, {"y": [B, 2, 4, T]})
    _, report = fold_model(m)
    (site,) = report.sites
    assert not site.layout_left


def test_a_cast_to_the_same_type_blocks_nothing() -> None:
    """`norm(x).to(x)` under the TorchScript exporter: a float-to-float Cast between the norm
    and the linear that takes it."""
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("Cast", ["n"], ["c"], to=onnx.TensorProto.FLOAT, name="to_x"),
             N("MatMul", ["c", "W"], ["m"], name="fc"), N("Add", ["m", "bias"], ["y"])]
    m = model(nodes, [*norm_constants(C), const("W", RNG.normal(size=(C, 3))),
                      const("bias", RNG.normal(size=3))], {"x": [B, C]}, {"y": [B, 3]})
    folded, report = fold_model(m)
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "Add"]
    assert report.sites[0].status == "folded"
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(B, C)).astype(np.float32)})
