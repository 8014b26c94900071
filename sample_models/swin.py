"""Swin-T-like hierarchical vision model: 4x4 patch embedding (Conv) + norm, four stages of
pre-norm blocks with window attention (7x7 windows, every other block shifted by half a window
with Swin's attention mask), patch merging (2x2 neighbours concatenated, norm, Linear 4C->2C)
between stages, final norm, average pooling over tokens, head. Dims 96/192/384/768, depths
2/2/6/2: 3136 tokens of 96 channels in stage 1, where norms cost most. Unlike Swin, no relative
position bias (it changes no norm site)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sample_models.layers import Attention, Mlp, make_norm


def _windows(x: Tensor, w: int) -> Tensor:  # (B, H, W, C) -> (B*nW, w*w, C)
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindows(x: Tensor, w: int, b: int, h: int, wd: int) -> Tensor:
    x = x.reshape(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, -1)


def _shift_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """(nW, w*w, w*w) True where two tokens of a shifted window come from different regions."""
    region = torch.zeros(h, w)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            region[hs, ws] = label
            label += 1
    ids = _windows(region[None, :, :, None], window).squeeze(-1)
    return ids[:, :, None] != ids[:, None, :]


class WindowAttention(Attention):
    def forward_windows(self, x: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
        scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        if mask is not None:  # (nW, N, N), repeated over the batch
            n_windows = mask.shape[0]
            scores = scores.unflatten(0, (-1, n_windows))
            scores = scores.masked_fill(mask[None, :, None], float("-inf")).flatten(0, 1)
        return self.out_proj((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, resolution, window, shift, norm, norm_options) -> None:
        super().__init__()
        self.resolution, self.window = resolution, min(window, resolution)
        self.shift = shift if resolution > window else 0
        self.norm1 = make_norm(norm, dim, norm_options)
        self.attn = WindowAttention(dim, heads, fused_qkv=True)
        self.norm2 = make_norm(norm, dim, norm_options)
        self.mlp = Mlp(dim, 4 * dim)
        mask = _shift_mask(resolution, resolution, self.window, self.shift) if self.shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, H*W, C)
        b, n, c = x.shape
        r, w = self.resolution, self.window
        y = self.norm1(x).reshape(b, r, r, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = _unwindows(self.attn.forward_windows(_windows(y, w), self.attn_mask), w, b, r, r)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: int, norm: str, norm_options) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = make_norm(norm, 4 * dim, norm_options)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        r = self.resolution
        x = x.reshape(b, r // 2, 2, r // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x.reshape(b, (r // 2) ** 2, 4 * c)))


class SwinTransformer(nn.Module):
    def __init__(self, *, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, dim: int = 96, depths=(2, 2, 6, 2),
                 heads=(3, 6, 12, 24), window: int = 7, norm: str = "ln",
                 norm_options: dict | None = None) -> None:
        super().__init__()
        self.img_size, self.in_chans = img_size, in_chans
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = make_norm(norm, dim, norm_options)
        resolution = img_size // patch_size
        stages: list[nn.Module] = []
        for i, (depth, n_heads) in enumerate(zip(depths, heads, strict=True)):
            stages += [SwinBlock(dim, n_heads, resolution, window, (j % 2) * (window // 2),
                                 norm, norm_options) for j in range(depth)]
            if i < len(depths) - 1:
                stages.append(PatchMerging(dim, resolution, norm, norm_options))
                dim, resolution = 2 * dim, resolution // 2
        self.stages = nn.Sequential(*stages)
        self.norm = make_norm(norm, dim, norm_options)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_norm(self.patch_embed(images).flatten(2).transpose(1, 2))
        x = self.norm(self.stages(x))
        return self.head(x.mean(dim=1))


def swin_tiny_like(norm: str = "ln", seed: int = 0, **kwargs) -> SwinTransformer:
    torch.manual_seed(seed)
    return SwinTransformer(norm=norm, **kwargs)
