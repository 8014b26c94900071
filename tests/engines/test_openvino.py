"""OpenVINO (the `openvino` extra): the runner agrees with ONNX Runtime on the shipped sample,
in fp32 (its CPU plugin would otherwise pick bf16 where the CPU has it), and runs through
`unfold verify --engine openvino`; `runner_for` picks every engine and refuses mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import unfold
from sample_models.registry import CHECKPOINT_DIR
from tests.optional import import_or_skip
from unfold.engines import runner_for
from unfold.errors import ExitCode, UnfoldError


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "digits.onnx"
    assert unfold.convert(CHECKPOINT_DIR / "digits-vit-un.pt2", out)
    return out


def test_openvino_agrees_with_onnx_runtime_in_fp32(digits_onnx: Path) -> None:
    import_or_skip("openvino")
    feeds = {"images": np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)}
    ov = runner_for(digits_onnx, "openvino", threads=1)
    ort = runner_for(digits_onnx, "ort", threads=1)
    assert ov.input_names == ort.input_names and ov.output_names == ort.output_names
    got, want = ov.run(feeds)["output"], ort.run(feeds)["output"]
    assert got.shape == want.shape == (5, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert ov.description.startswith("openvino ")


def test_verify_runs_the_candidate_on_openvino(digits_onnx: Path) -> None:
    import_or_skip("openvino")
    report = unfold.verify(CHECKPOINT_DIR / "digits-vit-un.pt2", digits_onnx, engine="openvino")
    assert report and report.candidate.startswith("openvino")


def test_runner_for_refuses_what_an_engine_cannot_run(digits_onnx: Path) -> None:
    with pytest.raises(UnfoldError, match="^engine='torch' runs model.pt files"):
        runner_for(digits_onnx, "torch")
    with pytest.raises(UnfoldError, match=r"^engine='nosuch': valid: ort, openvino, trt, torch"):
        runner_for(digits_onnx, "nosuch")
    with pytest.raises(UnfoldError, match="^compile=True applies to engine='torch' only"):
        runner_for(digits_onnx, "ort", compile=True)
    loaded = unfold.load.load_model(CHECKPOINT_DIR / "digits-vit-un.pt2")
    with pytest.raises(UnfoldError, match="^engine='ort' runs ONNX models"):
        runner_for(loaded, "ort")
    torch_runner = runner_for(loaded, "torch", threads=1)
    out = torch_runner.run({"images": np.zeros((2, 1, 8, 8), np.float32) + 0.5})
    assert out["output"].shape == (2, 10)


def test_a_missing_openvino_is_exit_code_3(monkeypatch: pytest.MonkeyPatch,
                                           digits_onnx: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UnfoldError, match=r"OpenVINO is not installed: `pip install -e "
                                          r"\"\.\[openvino\]\"`") as info:
        runner_for(digits_onnx, "openvino")
    assert info.value.exit_code == ExitCode.ENGINE_MISSING
