"""Online norms (unfold/fold/online.py) are found and reported, never folded: here ConvNeXt-V2's
global response norm (GRN), g = ‖x‖₂ over space divided by its mean over the channels, as both
exporters write it (ReduceL2, ReduceMean, Add eps, Div)."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

from unfold.fold import fold_model


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on channels-last (N, H, W, C) input, written from its paper."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.randn(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        response = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        normalized = response / (response.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * normalized) + self.beta + x


@pytest.mark.parametrize("dynamo", [True, False])
def test_global_response_norm_is_reported_online(dynamo: bool) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(GlobalResponseNorm(8).eval(), (torch.randn(2, 4, 4, 8),), buffer,
                          dynamo=dynamo)
    _, report = fold_model(onnx.load_from_string(buffer.getvalue()))
    assert [n.kind for n in report.online] == ["GRN (global response norm)"]
    assert report.to_dict()["no_norm_left"] is False
