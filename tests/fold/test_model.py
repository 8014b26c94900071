"""fold_model end to end on the shipped, trained digits ViT (pre-norm, 9 UN sites), measured
against the same architecture exported with its norms replaced by Identity (the limit)."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import torch

from sample_models.vit import digits_vit
from tests.sample_models.test_checkpoints import load_from_state_dict
from unfold.fold import fold_model

from .helpers import assert_same_outputs


def _export(model: torch.nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(2, 1, 8, 8),), buffer, dynamo=True,
                          input_names=["images"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    return onnx.load_from_string(buffer.getvalue())


def test_digits_vit_folds_to_the_no_norm_twin() -> None:
    original = _export(load_from_state_dict("digits-vit-un"))
    folded, report = fold_model(original)

    assert len(report.sites) == 9, [s.name for s in report.sites]
    assert [s.status for s in report.sites] == ["folded"] * 9, \
        [(s.name, s.reasons) for s in report.left]
    (final,) = [s for s in report.sites if s.path]
    assert final.path == ["moved past Gather 'node_select'"], "final norm -> cls token -> head"
    twin = _export(digits_vit(norm="none"))
    assert report.ops_after == Counter(node.op_type for node in twin.graph.node), \
        "the folded graph has the no-norm twin's op counts"
    images = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    assert_same_outputs(original, folded, {"images": images})

