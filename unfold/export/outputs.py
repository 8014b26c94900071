"""A torch model run once on numpy inputs, its outputs named by their structure: the names the
exporter gives the ONNX outputs and the torch runner (`unfold.engines.torch_runner`) gives its
results. Torch only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from unfold.errors import ExitCode, UnfoldError


def named_outputs(value: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model's output in order, named: `output` for a lone tensor,
    `output_0, output_1` in a tuple, the keys of a dict (a Hugging Face ModelOutput is one)."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in named_outputs(v, str(k))]
    if isinstance(value, (tuple, list)):
        return [pair for i, v in enumerate(value) for pair in named_outputs(v, f"{prefix}_{i}")]
    return []


def module_outputs(module: Any, input_names: Sequence[str], feeds: Mapping[str, np.ndarray], *,
                   by_keyword: bool = False, device: str = "cpu"
                   ) -> list[tuple[str, torch.Tensor]]:
    """`module`'s named outputs (`named_outputs`) on `feeds`, given in `input_names`' order (by
    keyword with `by_keyword`: inputs chosen among forward's optional ones), on `device`. A
    failure is an UnfoldError (BAD_INPUT) that names the inputs' shapes."""
    args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in input_names]
    try:
        with torch.inference_mode():
            return named_outputs(module(**dict(zip(input_names, args, strict=True)))
                                 if by_keyword else module(*args))
    except Exception as exc:
        shapes = ", ".join(f"{n} {tuple(a.shape)} {a.dtype}"
                           for n, a in zip(input_names, args, strict=True))
        raise UnfoldError(f"the torch model fails on inputs {shapes}: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                          ExitCode.BAD_INPUT) from None
