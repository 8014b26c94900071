"""PyTorch: the reference for everything `unfold` writes. Runs a loaded model on numpy feeds
(in the model's input order) and names its flattened outputs."""

from __future__ import annotations

from collections.abc import Sequence
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


class TorchRunner:
    def __init__(self, module: torch.nn.Module, input_names: Sequence[str],
                 output_names: Sequence[str] = (), *, device: str = "cpu",
                 by_keyword: bool = False, threads: int | None = None,
                 compile: bool = False) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        module = module.to(device) if device != "cpu" else module
        self.module: Any = torch.compile(module) if compile else module
        self.device = device
        self.input_names = list(input_names)
        self.by_keyword = by_keyword  # module(**inputs): inputs chosen among optional ones
        self.output_names = list(output_names)
        self.description = f"torch {torch.__version__} ({device}{', compiled' if compile else ''})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device)
                for n in self.input_names]
        try:
            with torch.inference_mode():
                outputs = named_outputs(
                    self.module(**dict(zip(self.input_names, args, strict=True)))
                    if self.by_keyword else self.module(*args))
        except Exception as exc:
            shapes = ", ".join(f"{n} {tuple(a.shape)} {a.dtype}"
                               for n, a in zip(self.input_names, args, strict=True))
            raise UnfoldError(f"the torch model fails on inputs {shapes}: "
                              f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                              ExitCode.BAD_INPUT) from None
        names = self.output_names or [name for name, _ in outputs]
        if len(names) != len(outputs):
            raise UnfoldError(f"the torch model returns {len(outputs)} tensor(s), the ONNX "
                              f"model {len(names)} ({', '.join(names)})", ExitCode.CHECK_FAILED)
        return {n: t.detach().float().cpu().numpy() if t.dtype == torch.bfloat16
                else t.detach().cpu().numpy() for n, (_, t) in zip(names, outputs, strict=True)}
