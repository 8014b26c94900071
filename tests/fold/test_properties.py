"""Property-based: random stacks of pre-/post-norm blocks (random widths, depths, fused or
separate q/k/v, layout ops between blocks, cls-token or mean pooling, a stem whose norm feeds a
bias-less linear: its shift becomes pending, like Swin's patch merging), exported to ONNX, then
folded. Always: outputs equal to the original, never more normalization ops than before,
folding twice = once."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sample_models.layers import Attention, Mlp
from unfold.fold import fold_model
from unfold.nn import UnifiedNorm

from .helpers import assert_same_outputs

NORM_OPS = ("Mul", "Add", "Sub", "Div", "Sqrt", "ReduceMean", "BatchNormalization")


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, fused: bool, post_norm: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm1, self.norm2 = UnifiedNorm(dim), UnifiedNorm(dim)
        self.attn = Attention(dim, heads, fused_qkv=fused)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Layout ops between blocks: none, a token roll (Slice/Slice/Concat), tokens flattened
    into the batch and back (Reshape pair), a swap of batch and tokens and back (Transposes)."""
    b, n, c = x.shape
    if kind == "roll":
        return torch.roll(x, shifts=1, dims=1)
    if kind == "flatten":
        return x.reshape(b * n, c).reshape(b, n, c)
    if kind == "transpose":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    return x


class Stack(nn.Module):
    def __init__(self, dim, heads, depth, fused, post_norm, pooling, final_norm,
                 layout, stem) -> None:
        super().__init__()
        self.stem = nn.Sequential(UnifiedNorm(dim), nn.Linear(dim, dim, bias=False)) if stem \
            else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads, fused, post_norm) for _ in range(depth))
        self.final = UnifiedNorm(dim) if final_norm else nn.Identity()
        self.pooling = pooling
        self.layout = layout
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = _layout(block(x), self.layout)
        x = self.final(x)
        x = x[:, 0] if self.pooling == "cls" else x.mean(dim=1) if self.pooling == "mean" else x
        return self.head(x)


stacks = st.fixed_dictionaries({
    "dim": st.sampled_from([8, 12, 16]), "heads": st.sampled_from([1, 2, 4]),
    "depth": st.integers(1, 3), "fused": st.booleans(), "post_norm": st.booleans(),
    "pooling": st.sampled_from(["cls", "mean", "none"]), "final_norm": st.booleans(),
    "layout": st.sampled_from(["none", "roll", "flatten", "transpose"]),
    "stem": st.booleans(), "seed": st.integers(0, 2**16),
})


def _build(spec: dict) -> nn.Module:
    torch.manual_seed(spec["seed"])
    model = Stack(**{k: v for k, v in spec.items() if k != "seed"})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, UnifiedNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
                m.running_var.uniform_(0.3, 3.0)
    return model.eval()


def _norm_ops(model: onnx.ModelProto) -> int:
    counts = Counter(n.op_type for n in model.graph.node)
    return sum(counts[op] for op in NORM_OPS)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks)
def test_random_stacks_fold_exactly(spec: dict) -> None:
    model = _build(spec)
    x = torch.randn(2, 5, spec["dim"])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    original = onnx.load_from_string(buffer.getvalue())
    folded, report = fold_model(original)
    assert_same_outputs(original, folded, {"x": np.random.default_rng(1).normal(
        size=(3, 5, spec["dim"])).astype(np.float32)})
    assert _norm_ops(folded) <= _norm_ops(original)
    if not spec["post_norm"] or spec["pooling"] != "none":
        # pre-norm always folds; post-norm folds too once something linear follows the stream
        assert bool(report), [(s.name, s.status, s.reasons) for s in report.left]
    twice, again = fold_model(folded)
    assert Counter(n.op_type for n in twice.graph.node) == report.ops_after
    assert all(s.status in ("folded", "materialized") for s in again.sites), \
        [(s.name, s.status, s.reasons) for s in again.sites]
