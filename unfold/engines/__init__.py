"""One runner per engine, each `run(feeds: dict[name, ndarray]) -> dict[name, ndarray]`:

- `ort`: ONNX Runtime (CUDA when onnxruntime-gpu sees a GPU, else CPU), on an ONNX model;
- `openvino`: OpenVINO's CPU plugin (fp32), on an ONNX model;
- `trt`: TensorRT 10 or 11 (strongly typed), on an ONNX model (built into an engine in memory)
  or a serialized engine;
- `torch`: PyTorch, on a loaded model (eager, or torch.compile'd).

`runner_for(model, engine, ...)` picks one: the runners that `convert` and `verify` compare and
those that `bench` times all come from it.

Each engine's package is imported only when that engine is asked for; one that is not
installed is an `UnfoldError` with exit code 3 that says how to get it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from unfold.errors import UnfoldError, option

if TYPE_CHECKING:
    import onnx

    from unfold.inputs import InputSpec
    from unfold.load import LoadedModel

ONNX_ENGINES = ("ort", "openvino", "trt")
ENGINES = (*ONNX_ENGINES, "torch")


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]
    description: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_engine(engine: Any) -> None:
    """One of ENGINES (verify, bench and runner_for take the same names)."""
    if engine not in ENGINES:
        raise UnfoldError(f"{option('engine', engine)}: valid: {', '.join(ENGINES)}")


def check_device(device: Any) -> None:
    """cpu, cuda, or cuda:N (what torch and the engines take)."""
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UnfoldError(f"{option('device', device)}: valid: cpu, cuda, cuda:N")


def check_runs(engine: str, what: object, *, is_onnx: bool) -> None:
    """That `engine` runs this kind of model (`what` names it in the error): the ONNX engines
    an ONNX model, `torch` a model.pt."""
    if engine == "torch" and is_onnx:
        raise UnfoldError(f"{option('engine', 'torch')} runs model.pt files; {what} is ONNX: "
                          f"use {' or '.join(option('engine', e) for e in ONNX_ENGINES)}")
    if engine in ONNX_ENGINES and not is_onnx:
        raise UnfoldError(f"{option('engine', engine)} runs ONNX models; {what} is not one: "
                          f"use {option('engine', 'torch')}, or convert it first")


def check_precision_runs(engine: str, device: str, precision: str | None, what: object,
                         doing: str = "run") -> None:
    """That `engine` on `device` has kernels for a graph that computes in `precision` ("fp16",
    "bf16", or None for fp32; `what` names it in the error, `doing` what the caller does with
    it): ONNX Runtime's CPU provider has almost none for bf16."""
    if precision == "bf16" and engine == "ort" and device == "cpu":
        raise UnfoldError(f"{what} computes in bf16, for which ONNX Runtime's CPU provider has "
                          f"almost no kernels: {doing} it with {option('engine', 'openvino')}")


def is_onnx_file(path: Path) -> bool:
    """A path the ONNX engines take (by its suffix, as `open_model` reads it)."""
    return path.suffix.lower() == ".onnx"


def open_model(path: Path, *, trust: bool = False, arch: str | None = None,
               arch_kwargs: Mapping[str, Any] | None = None, swap: str | None = None
               ) -> onnx.ModelProto | LoadedModel:
    """A model file as `runner_for` takes it: an ONNX model (`.onnx`, with its external data)
    or a torch model loaded safely (`unfold.load.load_model`, for any other file; `trust`,
    `arch`, `arch_kwargs` and `swap` as there), for a caller that does not look inside (bench;
    verify, which does, calls the two loaders itself, by the same `is_onnx_file`)."""
    if is_onnx_file(path):
        from unfold.onnx_files import load_onnx

        return load_onnx(path)
    from unfold.load import load_model

    return load_model(path, trust=trust, arch=arch, arch_kwargs=arch_kwargs, swap=swap)


def runner_for(model: Any, engine: str, *, device: str = "cpu",
               threads: int | None = None, specs: Sequence[InputSpec] = (),
               output_names: Sequence[str] = (), compile: bool = False) -> Runner:
    """The runner of `engine` for `model`: an ONNX model (a ModelProto or its path) for the
    ONNX engines or a serialized TensorRT engine (bytes) for `trt`, a loaded torch model
    (`unfold.load.LoadedModel`) for `torch`. `threads` fixes the engine's intra-op threads;
    `specs` (the inputs' shapes) are what a TensorRT engine is built for; `output_names` are
    the names of the torch model's flattened outputs (by default, names from their structure:
    `unfold.export.outputs`); `compile` runs the torch model through torch.compile."""
    check_engine(engine)
    is_torch = hasattr(model, "module")
    check_runs(engine, f"{model.source} (a {model.format})" if is_torch else model,
               is_onnx=not is_torch)
    if engine == "torch":
        from unfold.engines.torch_runner import TorchRunner

        return TorchRunner(model.module, model.input_names, output_names, device=device,
                           by_keyword=model.by_keyword, threads=threads, compile=compile)
    if compile:
        raise UnfoldError(f"{option('compile', True)} applies to {option('engine', 'torch')} "
                          f"only")
    if engine == "ort":
        from unfold.engines.ort import OrtRunner

        if hasattr(model, "graph"):  # (a ModelProto: what its weights say it computes in)
            from unfold.precision.half import graph_half_type

            check_precision_runs(engine, device, graph_half_type(model), "the model")
        return OrtRunner(model, device=device, threads=threads)
    if engine == "openvino":
        from unfold.engines.openvino import OpenVinoRunner

        return OpenVinoRunner(model, device=device, threads=threads)
    from unfold.engines.trt import TrtRunner

    if not isinstance(model, (str, Path)):
        return TrtRunner(model, specs)
    import onnx

    return TrtRunner(onnx.load(str(model)), specs)
