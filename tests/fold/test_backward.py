"""Backward (unfold/fold/backward.py): a norm folds into the Conv / MatMul / Gemm that produces
it, back through the layout ops between them (Swin's patch embed: Conv -> flatten -> transpose
-> norm), or into the embedding tables it reads (the second half of this file)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from unfold.fold import fold_model
from unfold.nn import UnifiedNorm

from .helpers import (
    RNG,
    assert_same_outputs,
    const,
    model,
    norm_constants,
    replace_initializer,
)

N = helper.make_node
C, V, L = 8, 11, 6  # the embedding tests: channels, vocabulary, sequence
NORM = [N("Mul", ["t", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["y"], name="norm_add")]


def _int64(name: str, values) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _patch_embed(pads: list[int], bias: bool = True) -> onnx.ModelProto:
    """images (N,3,8,8) -> Conv 8 channels -> (N,8,16) -> (N,16,8) -> norm, and the residual
    Add that keeps rule 1 from taking it."""
    conv_inputs = ["images", "W", "B"] if bias else ["images", "W"]
    nodes = [N("Conv", conv_inputs, ["c"], name="patch_embed", kernel_shape=[2, 2],
               strides=[2, 2], pads=pads),
             N("Reshape", ["c", "flat"], ["f"]),
             N("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
             *NORM, N("Add", ["y", "y"], ["out"])]
    inits = [const("W", RNG.normal(size=(8, 3, 2, 2))), _int64("flat", [0, 8, -1]),
             *norm_constants(8)] + ([const("B", RNG.normal(size=8))] if bias else [])
    side = (8 + pads[0] + pads[2] - 2) // 2 + 1
    return model(nodes, inits, {"images": ["N", 3, 8, 8]}, {"out": ["N", side * side, 8]})


@pytest.mark.parametrize(("pads", "bias"), [([0, 0, 0, 0], True), ([1, 1, 1, 1], False)])
def test_folds_into_a_patch_embed_conv_through_flatten_and_transpose(pads, bias) -> None:
    m = _patch_embed(pads, bias)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert site.path == ["folded into its producer Conv 'patch_embed'"]
    assert not {"Mul"} & set(report.ops_after), dict(report.ops_after)
    assert report.ops_after["Add"] == 1, "only the residual Add is left"
    onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(m, folded, {"images": RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)})


def _matmul_then_norm(bias: bool, extra_reader: bool = False) -> onnx.ModelProto:
    nodes = [N("MatMul", ["x", "W"], ["m"], name="proj")]
    nodes += [N("Add", ["m", "c"], ["t"], name="proj_bias")] if bias else \
        [N("Identity", ["m"], ["t"])]
    nodes += NORM + [N("Add", ["y", "y"], ["out"])]
    outputs = {"out": ["N", 5, 8]}
    if extra_reader:
        nodes.append(N("Relu", ["t"], ["side"]))
        outputs["side"] = ["N", 5, 8]
    inits = [const("W", RNG.normal(size=(6, 8))), *norm_constants(8)] + \
        ([const("c", RNG.normal(size=8))] if bias else [])
    return model(nodes, inits, {"x": ["N", 5, 6]}, outputs)


def test_folds_into_a_matmul_and_its_bias_add() -> None:
    m = _matmul_then_norm(bias=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.absorbed_by == ["proj"], site.reasons
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 2
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 6)).astype(np.float32)})


def test_a_producer_without_a_bias_takes_the_scale_and_the_shift_goes_on() -> None:
    """LeViT's MatMul -> BatchNorm: the scale goes into the weight's columns; the shift has
    no bias to go into and stays as one Add (here before a Relu: the minimum, reported)."""
    nodes = [N("MatMul", ["x", "W"], ["t"], name="proj"), *NORM, N("Relu", ["y"], ["out"])]
    m = model(nodes, [const("W", RNG.normal(size=(6, 8))), *norm_constants(8)],
              {"x": ["N", 5, 6]}, {"out": ["N", 5, 8]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.status, site.absorbed_by) == ("partial", ["proj"]), site
    assert site.path == ["folded into its producer MatMul 'proj'"]
    assert report.ops_after == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 6)).astype(np.float32)})


def test_not_into_a_producer_whose_output_something_else_reads() -> None:
    m = _matmul_then_norm(bias=False, extra_reader=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status != "folded" and not site.absorbed_by
    assert not [r for r in site.reasons if "producer" in r], site.reasons
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 5, 6)).astype(np.float32)})


def _metaformer_block(res_scale_first: bool) -> onnx.ModelProto:
    """timm's MetaFormer (caformer): x = res_scale(x) + layer_scale(mixer(norm1(x))) right
    after a downsampling Conv: x has two per-channel readers, the norm and res_scale."""
    norm = [N("Mul", ["t", "norm.scale"], ["n1"], name="norm1_mul"),
            N("Add", ["n1", "norm.shift"], ["n2"], name="norm1_add"),
            N("MatMul", ["n2", "Wm"], ["m"], name="mixer"),
            N("Add", ["m", "bm"], ["mb"], name="mixer_bias"),
            N("Mul", ["mb", "ls"], ["lsm"], name="layer_scale1")]
    res = [N("Mul", ["t", "rs"], ["res"], name="res_scale1")]
    nodes = [N("Conv", ["x", "Wc", "bc"], ["c"], name="downsample", kernel_shape=[1, 1]),
             N("Reshape", ["c", "flat"], ["r"]),
             N("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             *(res + norm if res_scale_first else norm + res),
             N("Add", ["res", "lsm"], ["y"], name="residual")]
    inits = [const("Wc", RNG.normal(size=(C, 3, 1, 1))), const("bc", RNG.normal(size=C)),
             _int64("flat", [0, C, -1]), *norm_constants(C),
             const("Wm", RNG.normal(size=(C, C))), const("bm", RNG.normal(size=C)),
             const("rs", RNG.uniform(0.5, 1.5, C)), const("ls", RNG.uniform(0.5, 1.5, C))]
    return model(nodes, inits, {"x": ["N", 3, 4, 4]}, {"y": ["N", 16, C]})


@pytest.mark.parametrize("res_scale_first", [False, True])
def test_a_producer_fold_never_changes_what_another_reader_sees(res_scale_first) -> None:
    """Once norm1 starts a pending on x (its Mul unplugged), res_scale1 must not see itself as
    x's only reader and scale the Conv: the residual would read norm1(x) (29% off)."""
    m = _metaformer_block(res_scale_first)
    folded, report = fold_model(m)
    assert_same_outputs(m, folded, {"x": RNG.normal(size=(2, 3, 4, 4)).astype(np.float32)})
    assert not any("downsample" in s.absorbed_by for s in report.sites)


def test_a_scale_that_overflows_the_weights_is_not_folded() -> None:
    m = _patch_embed([0, 0, 0, 0])
    replace_initializer(m, "norm.scale", np.full(8, 3e38))
    replace_initializer(m, "W", np.full((8, 3, 2, 2), 10.0))
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert any("non-finite" in r for r in site.reasons), site.reasons


# --- into the embedding tables: a norm right after the embeddings of a pre-norm model, which
# feeds a block norm and the residual stream (no reader can take it)

EMBEDDING_NORM = [N("Mul", ["emb", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
        N("Relu", ["normed"], ["y"])]


def _model(nodes, inits, other: bool = False) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", L, C])]
    if other:
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", L, C]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "ids", TensorProto.INT64, ["N", L])], outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


FEEDS = {"ids": RNG.integers(0, V, size=(2, L)).astype(np.int64)}


def test_a_token_and_position_sum_folds_into_the_tables() -> None:
    """The position table is cut to the sequence length, known only at run time."""
    nodes = [N("Gather", ["tok", "ids"], ["t"], name="tok_lookup"),
             N("Shape", ["ids"], ["ids_shape"]),
             N("Gather", ["ids_shape", "one"], ["len"], axis=0),
             N("Slice", ["pos", "zero", "len", "zero"], ["p"]),
             N("Add", ["t", "p"], ["emb"])] + EMBEDDING_NORM
    inits = norm_constants(C) + [const("tok", RNG.normal(size=(V, C))),
                                 const("pos", RNG.normal(size=(16, C))), _int64("zero", [0]),
                                 _int64("one", [1])]
    m = _model(nodes, inits)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert site.path == ["folded into the embedding tables 'tok_lookup'"]
    assert "Mul" not in report.ops_after and report.ops_after["Add"] == 1
    assert_same_outputs(m, folded, FEEDS)


def test_a_table_tied_to_another_op_is_left_alone() -> None:
    """The table also feeds another lookup (a decoder sharing it, say)."""
    nodes = [N("Gather", ["tok", "ids"], ["emb"], name="tok_lookup")] + EMBEDDING_NORM + \
        [N("Gather", ["tok", "ids"], ["other"], name="other_lookup")]
    m = _model(nodes, norm_constants(C) + [const("tok", RNG.normal(size=(V, C)))],
               other=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert "cannot fold into the embedding tables: the table of Gather 'tok_lookup' is shared " \
        "with another op (tied): folding would copy it" in site.reasons, site.reasons
    assert_same_outputs(m, folded, FEEDS)


class PreNormWithEmbeddingNorm(nn.Module):
    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, C)
        self.pos = nn.Parameter(torch.randn(16, C))
        self.emb_norm = UnifiedNorm(C) if norm else nn.Identity()
        self.norm1 = UnifiedNorm(C) if norm else nn.Identity()
        self.fc = nn.Linear(C, C)
        self.head = nn.Linear(C, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb_norm(self.tok(ids) + self.pos[: ids.shape[1]])
        x = x + self.fc(self.norm1(x))
        return self.head(x)


def _export(model: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randint(0, V, (2, L)),), buffer, dynamo=False,
                          input_names=["ids"], dynamic_axes={"ids": {0: "batch", 1: "seq"}})
    return onnx.load_from_string(buffer.getvalue())


def test_a_pre_norm_model_with_an_embedding_norm_folds_to_the_no_norm_twin() -> None:
    torch.manual_seed(0)
    model = PreNormWithEmbeddingNorm()
    with torch.no_grad():
        for norm in (model.emb_norm, model.norm1):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.3)
            norm.running_var.uniform_(0.3, 3.0)
    original = _export(model)
    folded, report = fold_model(original)
    assert [s.status for s in report.sites] == ["folded", "folded"], \
        [(s.name, s.reasons) for s in report.sites]
    assert any(p.startswith("folded into the embedding tables") for s in report.sites
               for p in s.path)
    _, twin = fold_model(_export(PreNormWithEmbeddingNorm(norm=False)))
    assert report.ops_after == twin.ops_after
    assert_same_outputs(original, folded, FEEDS)
