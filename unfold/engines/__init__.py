"""One runner per engine, each `run(feeds: dict[name, ndarray]) -> dict[name, ndarray]`:

- `ort`: ONNX Runtime (CUDA when onnxruntime-gpu sees a GPU, else CPU), on an ONNX model;
- `trt`: TensorRT 10, on an ONNX model (built into an engine in memory) or a serialized engine;
- `torch`: PyTorch, on a loaded model.

Each engine's package is imported only when that engine is asked for; one that is not
installed is an `UnfoldError` with exit code 3 that says how to get it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

ONNX_ENGINES = ("ort", "trt")
ENGINES = (*ONNX_ENGINES, "torch")


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]
    description: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
