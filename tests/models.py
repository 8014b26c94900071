"""Tiny models built in the tests (importable as `--arch tests.models:tiny_vit`): a pre-norm
ViT and a post-norm encoder-decoder from the sample factories, shrunk, with their offline
norms given non-trivial statistics so that a wrong fold cannot pass unnoticed."""

from __future__ import annotations

import torch

from sample_models.translation import TranslationTransformer
from sample_models.vit import digits_vit
from unfold.nn import PowerNorm, UnifiedNorm

VIT_INPUT = (2, 1, 8, 8)
SRC_VOCAB, TGT_VOCAB = 20, 18


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (UnifiedNorm, PowerNorm)):
                n = module.weight.numel()
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                stat = module.running_var if isinstance(module, UnifiedNorm) \
                    else module.running_phi
                stat.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return model


def tiny_vit(norm: str = "un", seed: int = 0, dim: int = 32) -> torch.nn.Module:
    """Pre-norm ViT on 1x8x8 images: 2 blocks, 2 heads."""
    model = digits_vit(norm=norm, seed=seed, dim=dim, depth=2, heads=2)
    return randomize_norms(model, seed).eval()


def tiny_translator(norm: str = "un", seed: int = 0) -> torch.nn.Module:
    """Post-norm encoder-decoder with embedding norms: token ids in, logits out."""
    torch.manual_seed(seed)
    model = TranslationTransformer(src_vocab=SRC_VOCAB, tgt_vocab=TGT_VOCAB, dim=32, heads=2,
                                   ffn_dim=64, encoder_layers=1, decoder_layers=1, norm=norm)
    return randomize_norms(model, seed).eval()


def translator_inputs(batch: int = 2, src_len: int = 7, tgt_len: int = 5,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(1, SRC_VOCAB, (batch, src_len), generator=gen),
            torch.randint(1, TGT_VOCAB, (batch, tgt_len), generator=gen))


def tiny_hf_bert(seed: int = 0) -> torch.nn.Module:
    """A Hugging Face BertModel (needs `transformers`: the `hf` or `zoo` extra), 2 layers, its
    five LayerNorms swapped for UnifiedNorm: post-norm, with a norm right after the embeddings.
    Token ids in, last hidden state (and pooled output) out."""
    import transformers

    from unfold.nn import swap_norms

    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=HF_VOCAB,
                                     max_position_embeddings=64)
    torch.manual_seed(seed)
    model, _ = swap_norms(transformers.BertModel(config), kind="un")
    return randomize_norms(model, seed).eval()


HF_VOCAB = 100


def tiny_timm_vit(seed: int = 0) -> torch.nn.Module:
    """A timm ViT (needs `timm`: the `zoo` extra) on 3x32x32 images, 2 blocks, its LayerNorms
    swapped for UnifiedNorm: pre-norm, cls token, final norm -> head."""
    import timm

    from unfold.nn import swap_norms

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2, num_classes=10)
    model, _ = swap_norms(model, kind="un")
    return randomize_norms(model, seed).eval()
