"""A Hugging Face model trained after `swap_norms`, back from its `save_pretrained` directory."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def from_pretrained(directory: str | Path) -> nn.Module:
    """What `transformers.AutoModel.from_pretrained(directory)` cannot give back for a model
    trained after `swap_norms`: it builds LayerNorms again and drops the UN/PN statistics (a
    different model, with a warning at most). This builds the class config.json names with
    transformers (its own classes only: no code from the directory runs), applies the swap
    that `swap_norms` recorded in the config, and loads model.safetensors strictly. Returns
    the model in eval mode (call .train() to go on training). The `hf` extra; a directory it
    cannot use raises unfold.errors.UnfoldError saying why."""
    from unfold.load.pretrained_dir import load_pretrained_dir

    model, _ = load_pretrained_dir(directory)
    return model
