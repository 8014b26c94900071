"""PyTorch: the reference for everything `unfold` writes. Runs a loaded model on numpy feeds
(in the model's input order) and names its flattened outputs as the exporter names the ONNX
model's (`unfold.export.outputs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unfold.errors import ExitCode, UnfoldError
from unfold.export.outputs import module_outputs


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
        outputs = module_outputs(self.module, self.input_names, feeds, by_keyword=self.by_keyword,
                                 device=self.device)
        names = self.output_names or [name for name, _ in outputs]
        if len(names) != len(outputs):
            raise UnfoldError(f"the torch model returns {len(outputs)} tensor(s), the ONNX "
                              f"model {len(names)} ({', '.join(names)})", ExitCode.CHECK_FAILED)
        return {n: t.detach().float().cpu().numpy() if t.dtype == torch.bfloat16
                else t.detach().cpu().numpy() for n, (_, t) in zip(names, outputs, strict=True)}
