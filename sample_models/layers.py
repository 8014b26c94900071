"""Building blocks shared by the sample architectures: attention, MLP, and the call that hands a
padding mask to the norms that use one (UnifiedNorm, PowerNorm) and not to the others."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unfold.nn import OfflineNorm, create_norm


def apply_norm(norm: nn.Module, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    """norm(x), passing `pad_mask` (True = padding) to the offline norms' statistics."""
    if pad_mask is not None and isinstance(norm, OfflineNorm):
        return norm(x, pad_mask=pad_mask)
    return norm(x)


def make_norm(kind: str, dim: int, norm_options: dict | None) -> nn.Module:
    options = dict(norm_options or {}) if kind in ("un", "pn", "pn*") else {}
    return create_norm(kind, dim, **options)


class Attention(nn.Module):
    """Multi-head attention with a fused qkv projection (timm) or separate q, k, v (fairseq).

    Written with explicit MatMul/Softmax so every exporter produces the same plain graph.
    `key_padding_mask` (B, S), True = padding; `causal` masks future positions.
    """

    def __init__(self, dim: int, heads: int, *, fused_qkv: bool, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.fused_qkv = heads, dim // heads, fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q_proj = nn.Linear(dim, dim)
            self.k_proj = nn.Linear(kv_dim or dim, dim)
            self.v_proj = nn.Linear(kv_dim or dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:  # (B, N, C) -> (B, H, N, D)
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor | None = None, *,
                key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            source = x if memory is None else memory
            q, k, v = self.q_proj(x), self.k_proj(source), self.v_proj(source)
        q, k, v = self._split(q), self._split(k), self._split(v)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if causal:
            n, s = scores.shape[-2:]
            future = torch.ones(n, s, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = scores.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.activation = {"gelu": F.gelu, "relu": F.relu}[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class PostNormEncoderLayer(nn.Module):
    """x = norm1(x + self_attn(x)); x = norm2(x + ffn(x)), with separate q, k, v and the
    padding mask reaching attention and the offline norms (fairseq's and BERT's layout)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, norm: str, norm_options,
                 activation: str) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, fused_qkv=False)
        self.norm1 = make_norm(norm, dim, norm_options)
        self.ffn = Mlp(dim, ffn_dim, activation=activation)
        self.norm2 = make_norm(norm, dim, norm_options)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        x = apply_norm(self.norm1, x + self.self_attn(x, key_padding_mask=pad), pad)
        return apply_norm(self.norm2, x + self.ffn(x), pad)
