"""ONNX Runtime: the reference engine for ONNX models, with every intermediate tensor on demand
(for naming the first node whose output departs, as polygraphy's "mark all" does)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from unfold.errors import ExitCode, UnfoldError
from unfold.onnx_files import PROTOBUF_LIMIT


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UnfoldError("ONNX Runtime has no CUDA provider here: install "
                              "`unfold[gpu]` (onnxruntime-gpu) on a machine with a GPU",
                              ExitCode.ENGINE_MISSING)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    def __init__(self, model: onnx.ModelProto | str | Path, *, device: str = "cpu",
                 extra_outputs: Sequence[str] = (), threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are raised, with the inputs
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # worker threads that spin after a run steal the next session's cores (BENCHMARKS.md:
        # on 2 cores one session's spinning doubled the next one's latency)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if extra_outputs:
            # intermediates as outputs: optimizations would fuse some of them away
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if not isinstance(model, onnx.ModelProto):
                model = onnx.load(str(model))
            model = _with_outputs(model, extra_outputs)
        source: str | bytes
        if isinstance(model, onnx.ModelProto):
            if model.ByteSize() >= PROTOBUF_LIMIT:
                raise UnfoldError("a model over 2 GiB runs from its file: save it with "
                                  "external data and pass the path")
            source = model.SerializeToString()
        else:
            source = str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=_providers(device))
        except Exception as exc:
            raise UnfoldError(f"ONNX Runtime cannot load the model: "
                              f"{type(exc).__name__}: {exc}", ExitCode.CHECK_FAILED) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.description = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(None, {n: feeds[n] for n in self.input_names})
        except Exception as exc:
            raise UnfoldError(f"ONNX Runtime failed on inputs "
                              f"{_shapes(feeds)}: {type(exc).__name__}: {exc}",
                              ExitCode.CHECK_FAILED) from None
        return dict(zip(self.output_names, values, strict=True))


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    present = {o.name for o in marked.graph.output}
    for name in names:
        if name not in present:
            marked.graph.output.append(onnx.ValueInfoProto(name=name))
    return marked


def _shapes(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" for k, v in feeds.items())
