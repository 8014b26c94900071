"""Pre-norm Vision Transformer (timm's layout): patch-embedding Conv, cls token, learned position
embedding, blocks x + attn(norm1(x)), x + mlp(norm2(x)), final norm, head on the cls token."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sample_models.layers import Attention, Mlp, make_norm


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm: str, norm_options) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, dim, norm_options)
        self.attn = Attention(dim, heads, fused_qkv=True)
        self.norm2 = make_norm(norm, dim, norm_options)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, num_classes: int,
                 dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, norm: str = "ln",
                 norm_options: dict | None = None) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.in_chans = img_size, in_chans
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, heads, mlp_ratio, norm, norm_options) for _ in range(depth)])
        self.norm = make_norm(norm, dim, norm_options)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def _build(defaults: dict, norm: str, seed: int, overrides: dict) -> VisionTransformer:
    torch.manual_seed(seed)  # norms draw no random numbers: every other weight matches
    return VisionTransformer(norm=norm, **{**defaults, **overrides})


_IMAGENET_16 = {"img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000}


def vit_small_patch16_224(norm: str = "ln", seed: int = 0, **kwargs) -> VisionTransformer:
    """ViT-S/16 at 224: dim 384, 12 blocks, 6 heads, 197 tokens."""
    return _build({**_IMAGENET_16, "dim": 384, "depth": 12, "heads": 6}, norm, seed, kwargs)


def deit_tiny_patch16_224(norm: str = "ln", seed: int = 0, **kwargs) -> VisionTransformer:
    """DeiT-T at 224: dim 192, 12 blocks, 3 heads, 197 tokens."""
    return _build({**_IMAGENET_16, "dim": 192, "depth": 12, "heads": 3}, norm, seed, kwargs)


def digits_vit(norm: str = "un", seed: int = 0, **kwargs) -> VisionTransformer:
    """The shipped digits model: 8x8 grey images, 2x2 patches (16 + cls = 17 tokens)."""
    defaults = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "dim": 64,
                "depth": 4, "heads": 4, "mlp_ratio": 2.0}
    return _build(defaults, norm, seed, kwargs)
