"""The sample models' data, all made here without downloads.

* digits: scikit-learn's handwritten digits (1797 8x8 images, shipped inside scikit-learn),
  a fixed stratified split of 360 held-out images (random_state=0).
* numbers: integers 0..9999 written out in English -> the same number in French, both by
  num2words, word-level tokens; 1000 held-out numbers (seeded) never seen in training.

The held-out sets are also written to `sample_models/data/` by the training script, so the
tests reproduce the card's metrics without scikit-learn or num2words installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sample_models.translation import BOS, EOS, PAD, SPECIALS, UNK

DATA_DIR = Path(__file__).parent / "data"
DIGITS_TEST_SIZE = 360
NUMBERS_RANGE = 10000
NUMBERS_TEST_SIZE = 1000
_TOKEN = re.compile(r"[^\s,-]+|[,-]")


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); images float32 (N, 1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=DIGITS_TEST_SIZE, random_state=0,
        stratify=digits.target)
    return x_train, y_train, x_test, y_test


def tokenize(text: str) -> list[str]:
    """Words, with commas and hyphens as tokens of their own (so detokenizing is exact)."""
    return _TOKEN.findall(text)


def number_pair(n: int) -> tuple[str, str]:
    from num2words import num2words

    return num2words(n, lang="en"), num2words(n, lang="fr")


def numbers_split(seed: int = 0) -> tuple[list[int], list[int]]:
    """(train numbers, held-out numbers): a seeded permutation of 0..9999."""
    order = np.random.default_rng(seed).permutation(NUMBERS_RANGE)
    return sorted(order[NUMBERS_TEST_SIZE:].tolist()), sorted(order[:NUMBERS_TEST_SIZE].tolist())


@dataclass
class Vocab:
    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, sentences: list[list[str]]) -> Vocab:
        return cls(SPECIALS + sorted({w for s in sentences for w in s}))

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, UNK) for t in tokens]

    def decode(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.words[i])
        return out

    def __len__(self) -> int:
        return len(self.words)


def source_ids(vocab: Vocab, tokens: list[str]) -> list[int]:
    """A source sentence as the encoder reads it: token ids, then EOS (fairseq's layout)."""
    return vocab.encode(tokens) + [EOS]


def batch_tokens(sequences: list[list[int]], *, bos: bool = False, eos: bool = False,
                 width: int | None = None) -> torch.Tensor:
    """Right-padded (B, L) int64 tensor, optionally framed by BOS/EOS."""
    rows = [([BOS] if bos else []) + s + ([EOS] if eos else []) for s in sequences]
    width = width or max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
