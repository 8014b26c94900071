"""BERT-base-like post-norm encoder: word + position + token-type embeddings, a norm right after
them, post-norm layers x = norm1(x + attn(x)), x = norm2(x + ffn(x)) (GELU), pooled [CLS] head.
Separate q, k, v projections, as Hugging Face's BertSelfAttention has them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sample_models.layers import PostNormEncoderLayer, apply_norm, make_norm


class BertEncoder(nn.Module):
    """forward(input_ids (B,S), attention_mask (B,S) with 1 = token) -> (B, num_classes)."""

    def __init__(self, *, vocab: int = 30522, dim: int = 768, depth: int = 12, heads: int = 12,
                 ffn_dim: int = 3072, max_positions: int = 512, num_classes: int = 2,
                 norm: str = "ln", norm_options: dict | None = None) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.embedding_norm = make_norm(norm, dim, norm_options)
        self.layers = nn.ModuleList(
            [PostNormEncoderLayer(dim, heads, ffn_dim, norm, norm_options, activation="gelu")
             for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        pad = attention_mask.eq(0)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        x = apply_norm(self.embedding_norm, x, pad)
        for layer in self.layers:
            x = layer(x, pad)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert_base(norm: str = "ln", seed: int = 0, **kwargs) -> BertEncoder:
    """BERT-base shape: dim 768, 12 layers, 12 heads, FFN 3072 (sequence length is the input's)."""
    torch.manual_seed(seed)
    return BertEncoder(norm=norm, **kwargs)
