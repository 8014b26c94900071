"""BatchNormalization sites: rewritten into a last-axis Mul/Add the rules fold (rank 2, or a
Transpose after it), folded straight into a Conv producer, refused with the reason otherwise;
training mode is online. Hand-built graphs, and a torch model through both exporters."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from unfold.fold import fold_model

from .helpers import RNG, assert_same_outputs, const, model

N = helper.make_node


def _bn_inits(channels: int) -> list[onnx.TensorProto]:
    return [const("gamma", RNG.normal(1, 0.3, channels)), const("beta", RNG.normal(size=channels)),
            const("mean", RNG.normal(size=channels)), const("var", RNG.uniform(0.5, 2, channels))]


BN = ["gamma", "beta", "mean", "var"]


def _feeds(shape) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=shape).astype(np.float32)}


def test_transpose_batchnorm_transpose_then_linear_folds() -> None:
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             N("BatchNormalization", ["t", *BN], ["bn"], name="bn", epsilon=1e-3),
             N("Transpose", ["bn"], ["back"], perm=[0, 2, 1]),
             N("MatMul", ["back", "W"], ["mm"], name="fc"), N("Add", ["mm", "c"], ["y"])]
    m = model(nodes, _bn_inits(8) + [const("W", RNG.normal(size=(8, 3))),
                                     const("c", RNG.normal(size=3))],
              {"x": ["N", 5, 8]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert (site.name, site.kind, site.status) == ("bn", "BatchNormalization", "folded")
    assert site.absorbed_by == ["fc"]
    assert not {"BatchNormalization", "Mul"} & set(report.ops_after)
    assert "Transpose" not in report.ops_after, "the two transposes cancel once the BN is gone"
    assert_same_outputs(m, folded, _feeds((2, 5, 8)))


def test_rank_two_batchnorm_folds_into_the_gemm_after_it() -> None:
    nodes = [N("BatchNormalization", ["x", *BN], ["bn"], name="bn"),
             N("Gemm", ["bn", "W", "c"], ["y"], name="fc", transB=1)]
    m = model(nodes, _bn_inits(8) + [const("W", RNG.normal(size=(3, 8))),
                                     const("c", RNG.normal(size=3))],
              {"x": ["N", 8]}, {"y": ["N", 3]})
    folded, report = fold_model(m)
    assert [s.status for s in report.sites] == ["folded"]
    assert dict(report.ops_after) == {"Gemm": 1}
    assert_same_outputs(m, folded, _feeds((4, 8)))


@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1]])
def test_conv_then_batchnorm_folds_into_the_conv(pads: list[int]) -> None:
    nodes = [N("Conv", ["x", "K"], ["c"], name="conv", kernel_shape=[3, 3], pads=pads),
             N("BatchNormalization", ["c", *BN], ["bn"], name="bn"),
             N("Relu", ["bn"], ["y"])]
    side = 6 - 2 + pads[0] + pads[2]
    m = model(nodes, _bn_inits(4) + [const("K", RNG.normal(size=(4, 2, 3, 3)))],
              {"x": ["N", 2, 6, 6]}, {"y": ["N", 4, side, side]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "folded" and site.path == ["folded into its producer Conv 'conv'"]
    assert dict(report.ops_after) == {"Conv": 1, "Relu": 1}
    onnx.checker.check_model(folded, full_check=True)
    assert_same_outputs(m, folded, _feeds((2, 2, 6, 6)))


def test_batchnorm_with_nothing_to_fold_into_stays_as_it_is() -> None:
    nodes = [N("BatchNormalization", ["x", *BN], ["bn"], name="bn"), N("Relu", ["bn"], ["y"])]
    m = model(nodes, _bn_inits(4), {"x": ["N", 4, 5]}, {"y": ["N", 4, 5]})
    folded, report = fold_model(m)
    (site,) = report.sites
    assert site.status == "stayed" and site.kind == "BatchNormalization"
    assert site.reasons == ["reader Relu (writing 'y'): Relu does not commute with a shift"]
    assert report.ops_after["BatchNormalization"] == 1 and not report
    assert_same_outputs(m, folded, _feeds((2, 4, 5)))


def test_batchnorm_in_training_mode_is_online() -> None:
    nodes = [N("BatchNormalization", ["x", *BN], ["y", "new_mean", "new_var"], name="bn",
               training_mode=1)]
    m = model(nodes, _bn_inits(4), {"x": [3, 4]}, {"y": [3, 4]})
    _, report = fold_model(m)
    assert report.sites == []
    assert [(o.name, o.kind) for o in report.online] == [("bn", "BatchNorm in training mode")]


class BatchNormTransformerBlock(nn.Module):
    """BatchNorm1d the two ways Transformers apply it: transposed around, and on (B*N, C)."""

    def __init__(self, dim: int = 16, norm: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm1d(dim) if norm else nn.Identity()
        self.fc = nn.Linear(dim, dim)
        self.norm2 = nn.BatchNorm1d(dim) if norm else nn.Identity()
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        x = x + self.fc(self.norm1(x.transpose(1, 2)).transpose(1, 2))
        b, n, c = x.shape
        return self.head(self.norm2(x.reshape(b * n, c)).reshape(b, n, c).mean(1))


def _export(module: nn.Module, dynamo: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(2, 5, 16),), buffer, dynamo=dynamo,
                          input_names=["x"])
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_torch_batchnorm_transformer_folds_to_the_no_norm_twin(dynamo: bool) -> None:
    torch.manual_seed(0)
    block = BatchNormTransformerBlock()
    with torch.no_grad():
        for bn in (block.norm1, block.norm2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_()
    original = _export(block, dynamo)
    folded, report = fold_model(original)
    assert [(s.kind, s.status) for s in report.sites] == [("BatchNormalization", "folded")] * 2
    _, twin = fold_model(_export(BatchNormTransformerBlock(norm=False), dynamo))
    assert report.ops_after == twin.ops_after
    assert_same_outputs(original, folded, _feeds((2, 5, 16)))
