"""unfold.export: the exporter that ran is the one reported, dynamic axes reach the ONNX, a
dynamo failure falls back to the TorchScript exporter with the root cause as the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sample_models.registry import CHECKPOINT_DIR
from tests.models import VIT_INPUT, tiny_vit
from unfold.engines.ort import OrtRunner
from unfold.errors import UnfoldError
from unfold.export import export_onnx
from unfold.inputs import InputSpec
from unfold.load import LoadedModel, load_model

IMAGES = InputSpec("images", VIT_INPUT, value_range=(0.0, 1.0), dynamic={0: "batch"})


def _loaded(module: torch.nn.Module, names: list[str]) -> LoadedModel:
    return LoadedModel(module.eval(), Path("test"), "pickled module", names)


class DataDependentBranch(torch.nn.Module):
    """torch.export cannot trace a branch on tensor values; the TorchScript tracer records
    the branch taken."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_torchscript_exporter_with_a_dynamic_batch() -> None:
    exported = export_onnx(_loaded(tiny_vit(), ["images"]), [IMAGES], exporter="torchscript")
    assert (exported.exporter, exported.fallback_reason) == ("torchscript", None)
    assert exported.input_names == ["images"] and exported.output_names == ["output"]
    (dim0, *rest) = exported.model.graph.input[0].type.tensor_type.shape.dim
    assert dim0.dim_param == "batch" and [d.dim_value for d in rest] == [1, 8, 8]
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = tiny_vit()(torch.from_numpy(x)).numpy()
    got = OrtRunner(exported.model).run({"images": x})["output"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_auto_falls_back_to_torchscript_and_says_why() -> None:
    spec = InputSpec("x", (2, 3), value_range=(0.1, 1.0))
    exported = export_onnx(_loaded(DataDependentBranch(), ["x"]), [spec])
    assert exported.exporter == "torchscript"
    assert exported.fallback_reason is not None
    assert exported.fallback_reason.startswith("the dynamo exporter failed: GuardOnData"), \
        exported.fallback_reason
    assert "\x1b[" not in exported.fallback_reason


def test_dynamo_on_request_fails_clearly_without_fallback() -> None:
    spec = InputSpec("x", (2, 3), value_range=(0.1, 1.0))
    with pytest.raises(UnfoldError, match="dynamo exporter failed.*try exporter='torchscript'"):
        export_onnx(_loaded(DataDependentBranch(), ["x"]), [spec], exporter="dynamo")


def test_a_torchscript_archive_goes_to_the_torchscript_exporter_first(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    exported = export_onnx(loaded, [InputSpec("input", (2, 4))])
    assert exported.exporter == "torchscript"
    assert "TorchScript archive" in (exported.fallback_reason or "")


@pytest.mark.slow
def test_a_traced_archive_the_torchscript_exporter_rejects_goes_to_dynamo(
        tmp_path: Path) -> None:
    """The TorchScript exporter loses the rank after a traced reshape ("transpose for tensor
    of unknown rank"); the archive is converted to a program and exported by dynamo."""
    torch.jit.save(torch.jit.trace(tiny_vit(), torch.rand(*VIT_INPUT)), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.input_names == ["images"]
    exported = export_onnx(loaded, [IMAGES])
    assert exported.exporter == "dynamo"
    assert "the torchscript exporter failed" in (exported.fallback_reason or "")
    x = np.random.default_rng(0).random(VIT_INPUT, dtype=np.float32)
    with torch.no_grad():
        expected = tiny_vit()(torch.from_numpy(x)).numpy()
    got = next(iter(OrtRunner(exported.model).run({exported.input_names[0]: x}).values()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_a_program_is_exported_by_dynamo_only() -> None:
    loaded = load_model(CHECKPOINT_DIR / "digits-vit-un.pt2")
    with pytest.raises(UnfoldError, match="dynamo exporter only"):
        export_onnx(loaded, loaded.input_specs, exporter="torchscript")


def test_a_wrong_input_shape_is_reported_before_exporting() -> None:
    wrong = InputSpec("images", (2, 3, 8, 8))
    with pytest.raises(UnfoldError, match=r"fails on inputs images \(2, 3, 8, 8\)"):
        export_onnx(_loaded(tiny_vit(), ["images"]), [wrong], exporter="torchscript")


def test_unknown_exporter() -> None:
    with pytest.raises(UnfoldError, match="valid: auto, dynamo, torchscript"):
        export_onnx(_loaded(tiny_vit(), ["images"]), [IMAGES], exporter="onnxscript")
