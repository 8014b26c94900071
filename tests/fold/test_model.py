"""fold_model end to end on the shipped, trained digits ViT (pre-norm, 9 UN sites)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch

from tests.sample_models.test_checkpoints import load_from_state_dict
from unfold.fold import fold_model

from .helpers import assert_same_outputs


def test_digits_vit_pre_norm_sites_fold_and_outputs_agree() -> None:
    model = load_from_state_dict("digits-vit-un")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), buffer, dynamo=True,
                          input_names=["images"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    original = onnx.load_from_string(buffer.getvalue())
    folded, report = fold_model(original)

    assert len(report.sites) == 9, [s.name for s in report.sites]
    assert len(report.folded) == 8, "every block's norm1/norm2 folds into qkv/fc1"
    (left,) = report.left
    assert left.reasons == ["reader Gather 'node_select' is not a MatMul or Gemm"], \
        "the final norm waits for the pass-through rule (Gather of the cls token)"
    assert report.ops_before["Mul"] - report.ops_after["Mul"] == 8
    assert report.ops_before["Add"] - report.ops_after["Add"] == 8
    images = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    assert_same_outputs(original, folded, {"images": images})
