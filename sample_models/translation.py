"""Post-norm encoder-decoder Transformer in fairseq's default layout (`normalize_before=False`):

    encoder layer: x = norm1(x + self_attn(x));           x = norm2(x + ffn(x))
    decoder layer: x = norm1(x + self_attn(x, causal));   x = norm2(x + cross_attn(x, enc))
                   x = norm3(x + ffn(x))

with embeddings scaled by sqrt(dim), sinusoidal positions, an optional norm right after the
embeddings (fairseq's `layernorm_embedding`), padding masks that reach both the attention and
the offline norms' statistics, and an output projection tied to the decoder embedding or not.
No final encoder/decoder norm, as in fairseq's post-norm models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sample_models.layers import Attention, Mlp, PostNormEncoderLayer, apply_norm, make_norm

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """fairseq's table: sin on the first half of the channels, cos on the second."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(table, (0, dim - 2 * half))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, norm: str, norm_options) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, fused_qkv=False)
        self.norm1 = make_norm(norm, dim, norm_options)
        self.cross_attn = Attention(dim, heads, fused_qkv=False)
        self.norm2 = make_norm(norm, dim, norm_options)
        self.ffn = Mlp(dim, ffn_dim, activation="relu")
        self.norm3 = make_norm(norm, dim, norm_options)

    def forward(self, x: Tensor, memory: Tensor, pad: Tensor, memory_pad: Tensor) -> Tensor:
        x = apply_norm(self.norm1, x + self.self_attn(x, causal=True), pad)
        x = apply_norm(self.norm2, x + self.cross_attn(x, memory, key_padding_mask=memory_pad),
                       pad)
        return apply_norm(self.norm3, x + self.ffn(x), pad)


class TranslationTransformer(nn.Module):
    """forward(src_tokens (B,S), prev_output_tokens (B,T)) -> logits (B,T,V_tgt)."""

    def __init__(self, *, src_vocab: int, tgt_vocab: int, dim: int, heads: int, ffn_dim: int,
                 encoder_layers: int, decoder_layers: int, norm: str = "ln",
                 norm_options: dict | None = None, embedding_norm: bool = True,
                 tie_output: bool = True, max_positions: int = 64) -> None:
        super().__init__()
        self.embed_scale = math.sqrt(dim)
        self.src_embed = nn.Embedding(src_vocab, dim, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, dim, padding_idx=PAD)
        nn.init.normal_(self.src_embed.weight, std=dim ** -0.5)
        nn.init.normal_(self.tgt_embed.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.src_embed.weight[PAD].zero_()
            self.tgt_embed.weight[PAD].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_positions, dim),
                             persistent=False)
        self.src_embed_norm = make_norm(norm, dim, norm_options) if embedding_norm else None
        self.tgt_embed_norm = make_norm(norm, dim, norm_options) if embedding_norm else None
        self.encoder = nn.ModuleList(
            [PostNormEncoderLayer(dim, heads, ffn_dim, norm, norm_options, activation="relu")
             for _ in range(encoder_layers)])
        self.decoder = nn.ModuleList(
            [DecoderLayer(dim, heads, ffn_dim, norm, norm_options) for _ in range(decoder_layers)])
        self.output_projection = None if tie_output else nn.Linear(dim, tgt_vocab, bias=False)

    def _embed(self, table: nn.Embedding, norm: nn.Module | None, tokens: Tensor,
               pad: Tensor) -> Tensor:
        x = self.embed_scale * table(tokens) + self.positions[: tokens.shape[1]]
        return apply_norm(norm, x, pad) if norm is not None else x

    def encode(self, src_tokens: Tensor) -> tuple[Tensor, Tensor]:
        pad = src_tokens.eq(PAD)
        x = self._embed(self.src_embed, self.src_embed_norm, src_tokens, pad)
        for layer in self.encoder:
            x = layer(x, pad)
        return x, pad

    def decode(self, prev_output_tokens: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        pad = prev_output_tokens.eq(PAD)
        x = self._embed(self.tgt_embed, self.tgt_embed_norm, prev_output_tokens, pad)
        for layer in self.decoder:
            x = layer(x, memory, pad, memory_pad)
        if self.output_projection is None:
            return x @ self.tgt_embed.weight.t()
        return self.output_projection(x)

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor) -> Tensor:
        memory, memory_pad = self.encode(src_tokens)
        return self.decode(prev_output_tokens, memory, memory_pad)

    @torch.no_grad()
    def greedy(self, src_tokens: Tensor, max_len: int = 32) -> Tensor:
        """Greedy decoding; returns (B, <=max_len) target tokens without BOS, EOS-terminated."""
        memory, memory_pad = self.encode(src_tokens)
        out = torch.full((src_tokens.shape[0], 1), BOS, dtype=torch.long,
                         device=src_tokens.device)
        done = torch.zeros(src_tokens.shape[0], dtype=torch.bool, device=src_tokens.device)
        for _ in range(max_len):
            logits = self.decode(out, memory, memory_pad)[:, -1]
            nxt = logits.argmax(-1).masked_fill(done, PAD)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt.eq(EOS)
            if bool(done.all()):
                break
        return out[:, 1:]
