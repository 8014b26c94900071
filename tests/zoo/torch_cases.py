"""torch.nn's own Transformers as zoo cases: `nn.TransformerEncoder` with a linear head and
`nn.Transformer` (encoder-decoder) with a linear head, d_model 32, 2 heads, 2 layers each,
dropout 0, in all 8 combinations of {encoder, encoder-decoder} x {pre-norm, post-norm} x
{batch_first, sequence first}.

The fast path. In eval mode, with batch_first, even heads, ReLU/GELU and no grad needed,
`nn.TransformerEncoderLayer.forward` calls `torch._transformer_encoder_layer_fwd`, which
computes LayerNorm itself from `norm1.weight`/`norm1.bias`: a layer whose norms were swapped
for UnifiedNorm then silently runs LayerNorm (measured here: outputs off by ~3 under
`torch.no_grad()`). Both exporters trace with grad enabled and requires_grad weights, so they
take the normal path whatever the flag; the wrappers below still turn the fast path off
(`torch.backends.mha.set_fastpath_enabled(False)`, restored afterwards) so that the torch
model and its export agree under `no_grad`/`inference_mode` too. `enable_nested_tensor=False`
keeps the encoder from converting a padded batch to a nested tensor.

Inputs: features of width 32 (no embedding), a key padding mask (bool, True = padding; row 1
has its last 3 source positions padded); the decoder gets a causal mask built in forward.
Pre-norm encoders end with a final norm (`norm=`), as pre-norm models do; nn.Transformer
always has its encoder_norm and decoder_norm (in the post-norm layout too)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from tests.zoo.harness import ZooCase, norms_to_identity, randomize_offline_norms
from unfold.nn import swap_norms

D_MODEL = 32
HEADS = 2
FFN = 64
LAYERS = 2
OUT = 10
BATCH = 2
SRC = 8
TGT = 6
SEED = 0


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _finish(model: nn.Module, twin: bool, seed: int = SEED) -> nn.Module:
    if twin:
        norms_to_identity(model)
    else:
        swap_norms(model, kind="un")
        randomize_offline_norms(model, seed)
    return model.eval()


class _Encoder(nn.Module):
    def __init__(self, norm_first: bool, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0,
                                           batch_first=batch_first, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(
            layer, LAYERS, norm=nn.LayerNorm(D_MODEL) if norm_first else None,
            enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, OUT)

    def forward(self, src: torch.Tensor, src_key_padding_mask: torch.Tensor):
        with _no_fastpath():
            hidden = self.encoder(src, src_key_padding_mask=src_key_padding_mask)
        return (self.head(hidden),)


class _EncoderDecoder(nn.Module):
    def __init__(self, norm_first: bool, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.transformer = nn.Transformer(
            D_MODEL, HEADS, LAYERS, LAYERS, FFN, dropout=0.0, batch_first=batch_first,
            norm_first=norm_first)
        # nn.Transformer builds its TransformerEncoder with the nested-tensor default (True);
        # the padded source would become a nested tensor on the fast path: off, as above
        self.transformer.encoder.use_nested_tensor = False
        self.head = nn.Linear(D_MODEL, OUT)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_key_padding_mask: torch.Tensor):
        length = tgt.shape[1] if self.batch_first else tgt.shape[0]
        causal = nn.Transformer.generate_square_subsequent_mask(length, dtype=tgt.dtype)
        with _no_fastpath():
            hidden = self.transformer(src, tgt, tgt_mask=causal, tgt_is_causal=True,
                                      src_key_padding_mask=src_key_padding_mask,
                                      memory_key_padding_mask=src_key_padding_mask)
        return (self.head(hidden),)


def _padding() -> torch.Tensor:
    mask = torch.zeros(BATCH, SRC, dtype=torch.bool)
    mask[1, SRC - 3:] = True
    return mask


def _features(length: int, batch_first: bool, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, length, D_MODEL, generator=gen)
    return x if batch_first else x.transpose(0, 1).contiguous()


def _encoder_case(norm_first: bool, batch_first: bool) -> ZooCase:
    def build(twin: bool) -> nn.Module:
        torch.manual_seed(SEED)
        return _finish(_Encoder(norm_first, batch_first), twin)

    name = f"torch_encoder_{'pre' if norm_first else 'post'}_{'bf' if batch_first else 'sf'}"
    return ZooCase(name, build, lambda: (_features(SRC, batch_first, 1), _padding()),
                   ("src", "src_key_padding_mask"))


def _encoder_decoder_case(norm_first: bool, batch_first: bool) -> ZooCase:
    def build(twin: bool) -> nn.Module:
        torch.manual_seed(SEED)
        return _finish(_EncoderDecoder(norm_first, batch_first), twin)

    name = f"torch_transformer_{'pre' if norm_first else 'post'}_{'bf' if batch_first else 'sf'}"
    return ZooCase(name, build,
                   lambda: (_features(SRC, batch_first, 1), _features(TGT, batch_first, 2),
                            _padding()),
                   ("src", "tgt", "src_key_padding_mask"))


TORCH_CASES: list[ZooCase] = [
    factory(norm_first, batch_first)
    for factory in (_encoder_case, _encoder_decoder_case)
    for norm_first in (True, False)
    for batch_first in (True, False)
]
