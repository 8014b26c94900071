"""OpenVINO: the runtime CPU deployers pick, on an ONNX model (the `openvino` extra). Compiled
for the CPU plugin with a fixed thread count and the latency hint, so that a benchmark's
variants run alike, in fp32; the model's dynamic dimensions stay dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from unfold.errors import ExitCode, UnfoldError, option


def require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise UnfoldError("OpenVINO is not installed: `pip install -e \".[openvino]\"` in this "
                          "checkout (or `pip install openvino`)", ExitCode.ENGINE_MISSING) from None


class OpenVinoRunner:
    def __init__(self, model: onnx.ModelProto | str | Path, *, device: str = "cpu",
                 threads: int | None = None) -> None:
        require_openvino()
        import openvino as ov

        if device != "cpu":
            raise UnfoldError(f"{option('device', device)}: unfold runs OpenVINO on the CPU "
                              f"only")
        core = ov.Core()
        # f32: on CPUs with bf16 units the plugin would otherwise compute in bf16 (off by ~1e-3
        # of the output scale on the sample model), which is another model, not a faster one
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                     "INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            source = core.read_model(str(model)) if not isinstance(model, onnx.ModelProto) \
                else core.read_model(model.SerializeToString(), b"")
            self.compiled = core.compile_model(source, "CPU", config)
        except Exception as exc:
            raise UnfoldError(f"OpenVINO cannot compile the model: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                              ExitCode.CHECK_FAILED) from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.description = f"openvino {ov.__version__.split('-')[0]} (CPU)"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self.request.infer({n: feeds[n] for n in self.input_names})
        except Exception as exc:
            raise UnfoldError(f"OpenVINO failed: {type(exc).__name__}: {exc}",
                              ExitCode.CHECK_FAILED) from None
        return {name: np.array(results[port])
                for name, port in zip(self.output_names, self.compiled.outputs, strict=True)}
