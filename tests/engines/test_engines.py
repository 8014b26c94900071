"""The runners: torch outputs named by structure, ONNX Runtime on a model proto, TensorRT
missing (as here) is exit code 3 with what to do, and its optimization profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unfold.engines.torch_runner import TorchRunner
from unfold.engines.trt import TrtRunner, profile_shapes
from unfold.errors import ExitCode, UnfoldError
from unfold.export.outputs import named_outputs
from unfold.inputs import InputSpec


def test_outputs_are_named_by_their_structure() -> None:
    t = torch.zeros(1)
    assert [n for n, _ in named_outputs(t)] == ["output"]
    assert [n for n, _ in named_outputs((t, t))] == ["output_0", "output_1"]
    assert [n for n, _ in named_outputs({"logits": t, "hidden": (t, t)})] == \
        ["logits", "hidden_0", "hidden_1"]


def test_torch_runner_feeds_in_input_order_and_reports_failures() -> None:
    class Sub(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a - b

    runner = TorchRunner(Sub(), ["a", "b"], ["diff"])
    out = runner.run({"b": np.ones(2, np.float32), "a": np.full(2, 3, np.float32)})
    np.testing.assert_array_equal(out["diff"], [2, 2])
    with pytest.raises(UnfoldError, match=r"fails on inputs a \(2,\) .*b \(3,\)") as info:
        runner.run({"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)})
    assert info.value.exit_code == ExitCode.BAD_INPUT


def _tensorrt_installed() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")  # tensorrt-stubs alone is a bare namespace


@pytest.mark.skipif(_tensorrt_installed(), reason="TensorRT is installed here")
def test_tensorrt_missing_is_exit_code_3_with_what_to_do() -> None:
    with pytest.raises(UnfoldError,
                       match=r"TensorRT is not installed: `pip install -e \"\.\[trt\]\"`") as info:
        TrtRunner(b"", [])
    assert info.value.exit_code == ExitCode.ENGINE_MISSING


def test_the_profile_covers_the_verification_batches() -> None:
    spec = InputSpec("ids", (4, 128), "int64", (0, 9), {0: "batch", 1: "seq"})
    assert profile_shapes(spec) == ((1, 1), (4, 128), (7, 128))
    assert profile_shapes(InputSpec("x", (2, 3))) == ((2, 3), (2, 3), (2, 3))


def test_a_bf16_graph_is_refused_on_onnx_runtimes_cpu_provider_by_name() -> None:
    """runner_for (what verify and bench both build their runners with) names the engine that
    runs it, instead of ONNX Runtime's NOT_IMPLEMENTED from a session that cannot be made."""
    import onnx
    from onnx import TensorProto, helper

    from unfold.engines import runner_for

    weight = helper.make_tensor("w", TensorProto.BFLOAT16, [2], [1.0, 2.0])
    nodes = [helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "w32"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    with pytest.raises(UnfoldError, match="computes in bf16, for which ONNX Runtime's CPU "
                                          "provider has almost no kernels: run it with "
                                          "engine='openvino'"):
        runner_for(model, "ort")
    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        graph.input, graph.output), opset_imports=[helper.make_opsetid("", 18)])
    assert runner_for(fp32, "ort").run({"x": np.ones(2, np.float32)})["y"].tolist() == [1, 1]
