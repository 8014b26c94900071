"""Hugging Face `transformers` architectures as zoo cases: tiny configs (hidden 32, 2 layers,
a vocabulary of 100), random weights from a seed, nothing downloaded.

Each model is wrapped in a module whose forward takes positional tensors and returns a tuple of
plain tensors (both torch.onnx exporters want that, not a ModelOutput). Attention is "eager"
everywhere, so that the attention is one MatMul/Softmax chain with an additive mask whichever
the exporter ("sdpa" exports too, with both exporters, tried on BERT and GPT-2). Every model
here exports with both exporters: no case drops one.

* `hf_bert` (BertModel): post-norm, a norm after the embeddings; padded attention mask; the
  pooler (Gather of token 0 -> Gemm -> Tanh) and the last hidden state both outputs.
* `hf_albert` (AlbertModel): one layer's weights (and its two norms) shared by all 3 layers,
  so the exports read each layer weight from several nodes; a factorized embedding (16 wide,
  its norm before the Linear to 32); post-norm; random biases (HF's are all zero); the
  pooler (Gather of token 0 -> Gemm -> Tanh) and the last hidden state both outputs.
* `hf_bart` (BartModel): post-norm encoder and decoder, each with an embedding norm; cross
  attention; padded source mask; decoder and encoder last hidden states both outputs.
* `hf_gpt2` (GPT2Model): pre-norm, Conv1D linears (addmm on the flattened tokens), padded
  causal mask, the final norm (ln_f) is the output.
* `hf_vit` (ViTModel): pre-norm, patch-embed Conv, cls-token Concat, final norm -> output and
  pooler.
* `hf_swin` (SwinModel, 48x48 images, patch 4, window 4): stage 1 has 12x12 tokens (no padding;
  its Pad still exported, with zero pads), its second block shifts the windows by 2; stage 2,
  after patch merging, has 6x6 tokens padded with zeros to 8x8 after layernorm_before, and its
  second block shifts too. Final norm -> output and average-pool pooler.
* `hf_clip_vision` (CLIPVisionModel): pre-norm, a norm (pre_layrnorm) between the embeddings and
  the first block, post_layernorm on the cls token only (the pooler output).
* `hf_whisper_encoder` (WhisperEncoder): Conv1d/GELU front end, pre-norm, bias-less k_proj, the
  final norm is the output.
* `hf_falcon` (FalconModel, Falcon-7B's layout: bias=False, parallel attention and MLP off one
  norm, rotary embeddings): the norm's shift, through the bias-less fused query_key_value, is
  split into q, k, v, and q and k go through the rotary halves (Slice, Neg, Concat, Mul by
  sin/cos): one Add right after the projection is its minimum, as is one after the bias-less
  dense_h_to_4h before GELU (4 in all). The fold leaves +8 today (an Add at every rotary half):
  its `ops` check is a strict xfail in test_hf.py, with the reason.
"""

from __future__ import annotations

from collections import Counter

import torch
import transformers
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from tests.zoo.harness import ZooCase, norms_to_identity, randomize_offline_norms
from unfold.nn import swap_norms

VOCAB = 100
BATCH = 2
SEQ = 8
SEED = 0


def _finish(model: nn.Module, twin: bool, seed: int = SEED) -> nn.Module:
    """The UN model (norms swapped, statistics randomized) or its no-norm twin, eval mode."""
    if twin:
        norms_to_identity(model)
    else:
        swap_norms(model, kind="un")
        randomize_offline_norms(model, seed)
    return model.eval()


def _ids(seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (BATCH, seq), generator=gen)


def _mask(seq: int = SEQ, padded: int = 3) -> torch.Tensor:
    """Row 0 all tokens, row 1 its last `padded` positions padding (right padding)."""
    mask = torch.ones(BATCH, seq, dtype=torch.long)
    mask[1, seq - padded:] = 0
    return mask


def _pixels(size: int, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, 3, size, size, generator=gen)


# --- BERT -------------------------------------------------------------------------------------


class _Bert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            vocab_size=VOCAB, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.model = transformers.BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


def build_bert(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Bert(), twin)


# --- ALBERT -----------------------------------------------------------------------------------

ALBERT_LAYERS = 3  # one set of layer weights, run three times


class _Albert(nn.Module):
    """One layer group of one layer, applied ALBERT_LAYERS times: every layer Linear and both
    layer norms are one module read ALBERT_LAYERS times (so one initializer read by several
    nodes in the export); a factorized embedding (16 wide, its norm before the mapping to 32)."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.AlbertConfig(
            vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=ALBERT_LAYERS,
            num_hidden_groups=1, inner_group_num=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.model = transformers.AlbertModel(config, add_pooling_layer=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


def build_albert(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    model = _Albert()
    # HF initializes every bias to 0: equal zero vectors would look like copies of one another
    # to the weight-sharing test (and an exporter may merge them); random ones, as in the twin
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return _finish(model, twin)


# --- BART -------------------------------------------------------------------------------------


class _Bart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.BartConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            vocab_size=VOCAB, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, attn_implementation="eager")
        self.model = transformers.BartModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         decoder_input_ids=decoder_input_ids, use_cache=False, return_dict=True)
        return out.last_hidden_state, out.encoder_last_hidden_state


def build_bart(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Bart(), twin)


# --- GPT-2 ------------------------------------------------------------------------------------


class _Gpt2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=VOCAB, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
            attn_implementation="eager")
        self.model = transformers.GPT2Model(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                         return_dict=True)
        return (out.last_hidden_state,)


def build_gpt2(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Gpt2(), twin)


# --- ViT --------------------------------------------------------------------------------------


class _Vit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8, num_channels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, attn_implementation="eager")
        self.model = transformers.ViTModel(config, add_pooling_layer=True)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return out.last_hidden_state, out.pooler_output


def build_vit(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Vit(), twin)


# --- Swin -------------------------------------------------------------------------------------

SWIN_IMAGE = 48  # patch 4 -> 12x12 tokens in stage 1, 6x6 in stage 2


class _Swin(nn.Module):
    """Window 4. Stage 1 (12x12 tokens, dim 32): 12 divides by 4, no padding; its second
    block shifts by 2. Stage 2 (6x6 after patch merging, dim 64): padded to 8x8 with zeros after
    layernorm_before, and its second block shifts too (6 > 4, so HF keeps the shift)."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.SwinConfig(
            image_size=SWIN_IMAGE, patch_size=4, num_channels=3, embed_dim=32, depths=[2, 2],
            num_heads=[2, 4], window_size=4, mlp_ratio=2.0, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, drop_path_rate=0.0, attn_implementation="eager")
        self.model = transformers.SwinModel(config, add_pooling_layer=True)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return out.last_hidden_state, out.pooler_output


def build_swin(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Swin(), twin)


# --- CLIP vision ------------------------------------------------------------------------------


class _ClipVision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, num_channels=3, attention_dropout=0.0,
            attn_implementation="eager")
        self.model = transformers.CLIPVisionModel(config)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return out.last_hidden_state, out.pooler_output


def build_clip_vision(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_ClipVision(), twin)


# --- Whisper encoder --------------------------------------------------------------------------

WHISPER_MELS = 16
WHISPER_FRAMES = 32  # = 2 * max_source_positions: the encoder insists on this length


class _WhisperEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.WhisperConfig(
            d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            num_mel_bins=WHISPER_MELS, max_source_positions=WHISPER_FRAMES // 2,
            max_target_positions=32, vocab_size=VOCAB, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=3, attn_implementation="eager")
        self.model = WhisperEncoder(config)

    def forward(self, input_features: torch.Tensor):
        out = self.model(input_features=input_features, return_dict=True)
        return (out.last_hidden_state,)


def build_whisper_encoder(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_WhisperEncoder(), twin)


def _features() -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(BATCH, WHISPER_MELS, WHISPER_FRAMES, generator=gen),)


# --- Falcon -----------------------------------------------------------------------------------


class _Falcon(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.FalconConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            bias=False, new_decoder_architecture=False, multi_query=False, parallel_attn=True,
            alibi=False, hidden_dropout=0.0, attention_dropout=0.0, attn_implementation="eager")
        self.model = transformers.FalconModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                         return_dict=True)
        return (out.last_hidden_state,)


def build_falcon(twin: bool) -> nn.Module:
    torch.manual_seed(SEED)
    return _finish(_Falcon(), twin)


FALCON_EXTRA = ("bias-less fused query_key_value and dense_h_to_4h: each takes the norm's scale, "
                "its shift stays one Add after it (2 layers x 2)")


HF_CASES: list[ZooCase] = [
    ZooCase("hf_bert", build_bert, lambda: (_ids(), _mask()),
            ("input_ids", "attention_mask")),
    ZooCase("hf_albert", build_albert, lambda: (_ids(), _mask()),
            ("input_ids", "attention_mask")),
    ZooCase("hf_bart", build_bart, lambda: (_ids(), _mask(), _ids(6, seed=4)),
            ("input_ids", "attention_mask", "decoder_input_ids")),
    ZooCase("hf_gpt2", build_gpt2, lambda: (_ids(), _mask()),
            ("input_ids", "attention_mask")),
    ZooCase("hf_vit", build_vit, lambda: (_pixels(32),), ("pixel_values",)),
    ZooCase("hf_swin", build_swin, lambda: (_pixels(SWIN_IMAGE),), ("pixel_values",)),
    ZooCase("hf_clip_vision", build_clip_vision, lambda: (_pixels(32),), ("pixel_values",)),
    ZooCase("hf_whisper_encoder", build_whisper_encoder, _features, ("input_features",)),
    ZooCase("hf_falcon", build_falcon, lambda: (_ids(), _mask()),
            ("input_ids", "attention_mask"), extra_ops={"*": Counter({"Add": 4})},
            left_sites={"*": 2}, why_extra=FALCON_EXTRA),
]
