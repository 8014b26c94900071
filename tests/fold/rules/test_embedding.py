"""Rule 6 (embedding): a norm right after the embeddings folds into the tables when nothing
else can take it (a pre-norm model's embedding norm feeds a block norm and the residual)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from unfold.fold import fold_model
from unfold.nn import UnifiedNorm

from ..helpers import RNG, assert_same_outputs, const, norm_constants

N = helper.make_node
C, V, L = 8, 11, 6
NORM = [N("Mul", ["emb", "norm.scale"], ["scaled"], name="norm_mul"),
        N("Add", ["scaled", "norm.shift"], ["normed"], name="norm_add"),
        N("Relu", ["normed"], ["y"])]


def _int64(name: str, values) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


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
             N("Add", ["t", "p"], ["emb"])] + NORM
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
    nodes = [N("Gather", ["tok", "ids"], ["emb"], name="tok_lookup")] + NORM + \
        [N("Gather", ["tok", "ids"], ["other"], name="other_lookup")]
    m = _model(nodes, norm_constants(C) + [const("tok", RNG.normal(size=(V, C)))],
               other=True)
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed"
    assert "cannot fold into the embedding tables: the table of 'tok_lookup' is shared with " \
        "another op (tied): folding would copy it" in site.reasons, site.reasons
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
