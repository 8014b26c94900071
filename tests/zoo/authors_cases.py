"""The UN authors' released models (hikvision-research/Unified-Normalization), rebuilt here
from their description so that they export the same op sequence: nothing is downloaded and
none of their code is copied.

- `AuthorsUN1d`: their layer in eval. It takes (B, N, C) (fairseq hands it (T, B, C): the
  statistics are per channel, so any two leading axes), permutes to (B, C, N), reshapes to
  (B, C, -1), unsqueezes a last axis, divides by sqrt(running_var + eps) and applies
  weight/bias as (1, C, 1, 1) constants, reshapes back to the permuted shape and permutes
  back. Five layout ops around one affine.
- T2T-ViT (image_classification/models): a soft split (nn.Unfold) -> token transformer
  (single head, qkv without bias, the value added back) -> soft split -> project -> cls token
  and a sinusoidal position table -> pre-norm blocks with qkv_bias=False -> final norm -> cls
  -> head. Scaled down (the shapes, not the sizes, are what the fold meets).
- fairseq's TransformerEncoderLayer / TransformerDecoderLayer with UN1d, (T, B, C) layout,
  separate q/k/v/out projections with biases, q scaled, heads split by view + transpose, bmm;
  pre-norm (their training script) and post-norm (fairseq's default).

Each case's twin is the same module with every AuthorsUN1d an Identity.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from .harness import ZooCase


class AuthorsUN1d(nn.Module):
    """Exports as the authors' UN1d does in eval (their buffers, their op order)."""

    def __init__(self, channels: int, eps: float = 1e-5, window_size: int = 4) -> None:
        super().__init__()
        self.num_features, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        # their buffers, names, shapes and dtypes (a state dict saved from their layer has
        # these keys): the step count and outlier count are (1,) int64
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("ema_gz", torch.zeros(channels))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))
        self.register_buffer("buffer_x2", torch.zeros(window_size, channels))
        self.register_buffer("buffer_gz", torch.zeros(window_size, channels))
        self.register_buffer("skip_counter", torch.zeros(1, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shaped_input = x.dim() == 2
        if shaped_input:
            x = x.unsqueeze(0)
        x = x.permute(0, 2, 1).contiguous()
        input_shape = x.size()
        x = x.reshape(x.size(0), self.num_features, -1).unsqueeze(-1)
        channels = x.size(1)
        var = self.running_var.view(1, channels, 1, 1)
        x = x / (var + self.eps).sqrt()
        x = self.weight.view(1, channels, 1, 1) * x + self.bias.view(1, channels, 1, 1)
        x = x.reshape(input_shape).permute(0, 2, 1).contiguous()
        return x.squeeze(0) if shaped_input else x


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AuthorsUN1d):
                n = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return model


def _norm(twin: bool, channels: int) -> nn.Module:
    return nn.Identity() if twin else AuthorsUN1d(channels)


# --- T2T-ViT ----------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), \
            nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """transformer_block.Attention: qkv without bias (T2T-ViT's qkv_bias=False), scale after
    q @ kᵀ, heads by reshape + permute."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=False), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, twin: bool) -> None:
        super().__init__()
        self.norm1, self.attn = _norm(twin, dim), Attention(dim, heads)
        self.norm2, self.mlp = _norm(twin, dim), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """token_transformer.Token_transformer: one head, qkv without bias, in_dim != dim, the
    scale from the input dim, the value added back to the attention's output."""

    def __init__(self, dim: int, in_dim: int, twin: bool) -> None:
        super().__init__()
        self.in_dim, self.scale = in_dim, dim ** -0.5
        self.norm1 = _norm(twin, dim)
        self.qkv, self.proj = nn.Linear(dim, in_dim * 3, bias=False), nn.Linear(in_dim, in_dim)
        self.norm2, self.mlp = _norm(twin, in_dim), Mlp(in_dim, in_dim)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, 1, self.in_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.in_dim))
        return v.squeeze(1) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2) / dim)[None, :]
    table = position / rate
    table[:, 0::2], table[:, 1::2] = torch.sin(table[:, 0::2]), torch.cos(table[:, 1::2])
    return table.float()[None]


class T2TViT(nn.Module):
    """T2T-ViT with the 'transformer' T2T module (their T2t_vit_t_*), on 32x32 images: soft
    split 7/4/2 -> token transformer -> soft split 3/2/1 -> token transformer -> soft split
    3/2/1 -> project -> [cls] + sinusoid table -> blocks -> norm -> cls -> head."""

    def __init__(self, twin: bool, dim: int = 48, depth: int = 2, heads: int = 4,
                 token_dim: int = 16, mlp_ratio: float = 2.0, classes: int = 10) -> None:
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = TokenTransformer(3 * 7 * 7, token_dim, twin)
        self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim, twin)
        self.project = nn.Linear(token_dim * 3 * 3, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.register_buffer("pos_embed", _sinusoid_table(2 * 2 + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, twin) for _ in range(depth))
        self.norm, self.head = _norm(twin, dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        b, hw, c = x.shape
        side = int(math.sqrt(hw))
        x = self.attention2(self.soft_split1(x.transpose(1, 2).reshape(b, c, side, side))
                            .transpose(1, 2))
        b, hw, c = x.shape
        side = int(math.sqrt(hw))
        x = self.project(self.soft_split2(x.transpose(1, 2).reshape(b, c, side, side))
                         .transpose(1, 2))
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# --- fairseq ----------------------------------------------------------------------------------

class FairseqAttention(nn.Module):
    """fairseq's MultiheadAttention as it runs on its explicit path: separate q/k/v/out
    projections with biases, q *= head_dim**-0.5, (T, B, C) -> (B*H, T, d) by view +
    transpose, bmm, softmax, bmm, transpose + view back, out_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        tgt, bsz, dim = query.shape
        q = self.q_proj(query) * self.scaling
        k, v = self.k_proj(key), self.v_proj(key)
        q = q.contiguous().view(tgt, bsz * self.heads, self.head_dim).transpose(0, 1)
        k = k.contiguous().view(-1, bsz * self.heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * self.heads, self.head_dim).transpose(0, 1)
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        attn = torch.bmm(weights, v).transpose(0, 1).contiguous().view(tgt, bsz, dim)
        return self.out_proj(attn)


class FairseqEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, pre_norm: bool, twin: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn, self.self_attn_layer_norm = FairseqAttention(dim, heads), \
            _norm(twin, dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.final_layer_norm = _norm(twin, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.pre_norm:
            x = self.self_attn_layer_norm(x)
        x = residual + self.self_attn(x, x)
        if not self.pre_norm:
            x = self.self_attn_layer_norm(x)
        residual = x
        if self.pre_norm:
            x = self.final_layer_norm(x)
        x = residual + self.fc2(torch.relu(self.fc1(x)))
        if not self.pre_norm:
            x = self.final_layer_norm(x)
        return x


class FairseqDecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, pre_norm: bool, twin: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn, self.self_attn_layer_norm = FairseqAttention(dim, heads), \
            _norm(twin, dim)
        self.encoder_attn, self.encoder_attn_layer_norm = FairseqAttention(dim, heads), \
            _norm(twin, dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.final_layer_norm = _norm(twin, dim)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, body) -> torch.Tensor:
        residual = x
        if self.pre_norm:
            x = norm(x)
        x = residual + body(x)
        return x if self.pre_norm else norm(x)

    def forward(self, x: torch.Tensor, encoder_out: torch.Tensor) -> torch.Tensor:
        x = self._sublayer(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, h))
        x = self._sublayer(x, self.encoder_attn_layer_norm,
                           lambda h: self.encoder_attn(h, encoder_out))
        return self._sublayer(x, self.final_layer_norm,
                              lambda h: self.fc2(torch.relu(self.fc1(h))))


class FairseqLayers(nn.Module):
    """Two encoder layers and a decoder layer reading the encoder's output, at IWSLT14's
    proportions scaled down (dim 32, 4 heads, FFN 64); pre-norm with the final norms their
    --encoder/decoder-normalize-before adds."""

    def __init__(self, pre_norm: bool, twin: bool, dim: int = 32, heads: int = 4,
                 ffn: int = 64) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(FairseqEncoderLayer(dim, heads, ffn, pre_norm, twin)
                                     for _ in range(2))
        self.decoder = FairseqDecoderLayer(dim, heads, ffn, pre_norm, twin)
        self.encoder_norm = _norm(twin, dim) if pre_norm else nn.Identity()
        self.decoder_norm = _norm(twin, dim) if pre_norm else nn.Identity()
        self.output_projection = nn.Linear(dim, 20)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            source = layer(source)
        encoder_out = self.encoder_norm(source)
        return self.output_projection(self.decoder_norm(self.decoder(target, encoder_out)))


def t2t_vit(twin: bool = False) -> nn.Module:
    """The T2T-ViT above as an --arch factory (an authors' architecture on the user's path)."""
    return T2TViT(twin)


def _build(factory, twin: bool) -> nn.Module:
    torch.manual_seed(0)
    return randomize(factory(twin)).eval()


QKV_BIAS_FREE = "qkv_bias=False: the query's shift has no bias to go into (one Add a block)"


def cases() -> list[ZooCase]:
    return [
        ZooCase("t2t-vit", lambda twin: _build(lambda t: T2TViT(t), twin),
                lambda: (torch.randn(2, 3, 32, 32),), ("images",), dynamic_batch=True,
                extra_ops={"*": Counter({"Add": 4})}, left_sites={"*": 4},
                why_extra=QKV_BIAS_FREE + " (2 blocks, 2 token transformers)"),
        ZooCase("fairseq-pre-norm",
                lambda twin: _build(lambda t: FairseqLayers(True, t), twin),
                lambda: (torch.randn(6, 2, 32), torch.randn(5, 2, 32)),
                ("source", "target")),
        ZooCase("fairseq-post-norm",
                lambda twin: _build(lambda t: FairseqLayers(False, t), twin),
                lambda: (torch.randn(6, 2, 32), torch.randn(5, 2, 32)),
                ("source", "target")),
    ]


AUTHORS_CASES = cases()
