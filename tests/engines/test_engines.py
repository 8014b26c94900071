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
