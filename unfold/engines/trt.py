"""TensorRT 10: an ONNX model built into an engine in memory (one optimization profile that
covers the verification shapes: batch 1 up to the declared batch + 3), or a serialized engine,
run with device buffers from torch.cuda.

Loaded only when asked for: without the `tensorrt` package, or without a CUDA GPU, every entry
point raises an UnfoldError with exit code 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from unfold.errors import ExitCode, UnfoldError
from unfold.inputs import InputSpec


def require_tensorrt() -> None:
    """Exit code 3 with what to do, unless TensorRT and a CUDA GPU are both here."""
    try:
        import tensorrt

        if not hasattr(tensorrt, "Builder"):  # e.g. only tensorrt-stubs: a bare namespace
            raise ImportError("no TensorRT library")
    except ImportError:
        raise UnfoldError("TensorRT is not installed: `pip install -e \".[trt]\"` (the `trt` "
                          "extra) in this checkout, on a machine with an NVIDIA GPU (its wheels "
                          "come from NVIDIA's index)",
                          ExitCode.ENGINE_MISSING) from None
    import torch

    if not torch.cuda.is_available():
        raise UnfoldError("TensorRT needs a CUDA GPU and torch sees none",
                          ExitCode.ENGINE_MISSING)


def profile_shapes(spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) for one input: dynamic axes from 1 (batch: up to declared + 3)."""
    low = tuple(1 if i in spec.dynamic else d for i, d in enumerate(spec.shape))
    high = tuple(d + 3 if i == 0 and i in spec.dynamic else d for i, d in enumerate(spec.shape))
    return low, spec.shape, high


def build_serialized(model: onnx.ModelProto, specs: Sequence[InputSpec], *,
                     fp16: bool = False, workspace_bytes: int = 4 << 30) -> bytes:
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnfoldError(f"TensorRT's ONNX parser rejects the model: {errors}",
                          ExitCode.CHECK_FAILED)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    by_name = {s.name: s for s in specs}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in by_name:
            raise UnfoldError(f"no shape for the engine input {tensor.name}")
        low, opt, high = profile_shapes(by_name[tensor.name])
        profile.set_shape(tensor.name, trt.Dims(list(low)), trt.Dims(list(opt)),
                          trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnfoldError("TensorRT failed to build an engine (see its log above)",
                          ExitCode.CHECK_FAILED)
    return bytes(serialized)


class TrtRunner:
    def __init__(self, model: onnx.ModelProto | bytes, specs: Sequence[InputSpec], *,
                 fp16: bool = False) -> None:
        require_tensorrt()
        import tensorrt as trt
        import torch

        self._torch = torch
        serialized = model if isinstance(model, bytes) else build_serialized(model, specs,
                                                                             fp16=fp16)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise UnfoldError("TensorRT cannot deserialize the engine (built by another "
                              "TensorRT version or GPU?)", ExitCode.BAD_INPUT)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == inputs]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != inputs]
        self.description = f"TensorRT {trt.__version__}{' fp16' if fp16 else ''}"
        self._trt = trt

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []  # device buffers live until the stream is done
        for name in self.input_names:
            array = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(array)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, array.data_ptr())
        outputs = {}
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)
            shape = tuple(dims[i] for i in range(len(dims)))
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            buffer = torch.empty(shape, dtype=_torch_dtype(torch, dtype), device="cuda")
            outputs[name] = buffer
            self.context.set_tensor_address(name, buffer.data_ptr())
        stream = torch.cuda.Stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UnfoldError("TensorRT failed to run the engine", ExitCode.CHECK_FAILED)
        stream.synchronize()
        return {name: buffer.cpu().numpy() for name, buffer in outputs.items()}


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32,
            "int64": torch.int64, "bool": torch.bool, "int8": torch.int8}[dtype.name]
