"""`--precision fp16|bf16` on convert and fold (unfold/precision/checked.py): the folded graph
written in that type, checked against the reference with that type's tolerances on a CPU
engine that runs it, on the caller's real inputs where given; nothing written on a mismatch.
The shipped digits ViT keeps its test-set accuracy in both types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import unfold
from sample_models.data import DATA_DIR
from sample_models.registry import CHECKPOINT_DIR
from unfold.engines.ort import OrtRunner

ROOT = Path(__file__).parents[2]
DIGITS = CHECKPOINT_DIR / "digits-vit-un.pt2"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(the images as an npz the model takes, the images, the labels)."""
    data = np.load(DATA_DIR / "digits_test.npz")
    path = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(path, images=data["images"])
    return path, data["images"], data["labels"]


def _accuracy(model: Path, images: np.ndarray, labels: np.ndarray, precision: str) -> float:
    from unfold.precision.checked import half_runner

    runner = OrtRunner(model) if precision == "fp32" else half_runner(model, precision)
    logits = runner.run({runner.input_names[0]: images})[runner.output_names[0]]
    return float((logits.argmax(-1) == labels).mean())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_convert_writes_the_type_checked_against_torch_and_keeps_the_accuracy(
        tmp_path: Path, digits, precision: str) -> None:
    if precision == "bf16":
        pytest.importorskip("openvino")
    npz, images, labels = digits
    fp32, half = tmp_path / "fp32.onnx", tmp_path / f"{precision}.onnx"
    assert unfold.convert(DIGITS, fp32)
    report = unfold.convert(DIGITS, half, precision=precision, inputs=unfold.Inputs(npz=npz))
    assert report.outcome == "written", report.precision_verification
    assert report.precision is not None
    # (the patch-embedding Conv takes bf16 from ONNX opset 22 on; the export is opset 20)
    assert [k.op for k in report.precision.kept] == ([] if precision == "fp16" else ["Conv"])
    checked = report.precision_verification
    assert checked is not None and [b.label for b in checked.batches] == ["real inputs images.npz"]
    model = onnx.load(half)
    half_type = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16
    assert {t.data_type for t in model.graph.initializer if "patch_embed" not in t.name and
            t.data_type != onnx.TensorProto.INT64} == {half_type}
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] \
        == [onnx.TensorProto.FLOAT] * 2
    before = _accuracy(fp32, images, labels, "fp32")
    after = _accuracy(half, images, labels, precision)
    assert before > 0.95 and abs(after - before) <= 2 / len(labels), (before, after)


def test_fold_file_checks_the_half_graph_against_the_input_even_where_nothing_folds(
        tmp_path: Path, digits) -> None:
    npz = digits[0]
    fp32 = tmp_path / "fp32.onnx"
    assert unfold.convert(DIGITS, fp32)
    report = unfold.fold_file(fp32, tmp_path / "half.onnx", precision="fp16",
                              inputs=unfold.Inputs(npz=npz))
    assert report.outcome == "written"
    assert report.precision_verification is not None and report.precision_verification


def test_a_half_graph_outside_the_tolerance_is_not_written_and_exits_1(tmp_path: Path,
                                                                        digits) -> None:
    out = tmp_path / "half.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "convert", str(DIGITS), "--out", str(out), "--precision",
         "fp16", "--rtol", "1e-7", "--atol", "0", "--inputs", str(digits[0])],
        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "error: the fp16 ONNX does not match torch; nothing written" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_an_unknown_precision_is_refused_before_any_work(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "fold", str(tmp_path / "missing.onnx"), "--out",
         str(tmp_path / "o.onnx"), "--precision", "int4"],
        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "'int4' is not a precision; valid: fp16, bf16" in \
        done.stderr
    with pytest.raises(unfold.UnfoldError, match="precision='fp8': expected one of fp16, bf16"):
        unfold.fold_file(tmp_path / "missing.onnx", tmp_path / "o.onnx", precision="fp8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_hugging_face_bert_goes_to_half_with_its_mask_in_fp32(tmp_path: Path,
                                                                 precision: str) -> None:
    """transformers' own BERT (swapped to UN), its attention mask the float32 extreme: the
    mask's Where stays fp32, and what the measured inputs show past the type's range (the
    masked scores, the Add and Softmax that read them) too; the rest converts and checks."""
    transformers = pytest.importorskip("transformers")
    if precision == "bf16":
        pytest.importorskip("openvino")
    import torch

    from unfold.nn import swap_norms

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128,
                                     vocab_size=1000)
    model, _ = swap_norms(transformers.BertModel(config).eval(), kind="un")
    inputs = unfold.Inputs(shapes={"input_ids": (2, 16), "attention_mask": (2, 16)},
                           dtype={"input_ids": "int64", "attention_mask": "int64"},
                           int_range={"input_ids": (0, 999), "attention_mask": (0, 1)})
    report = unfold.convert(model, tmp_path / "bert.onnx", inputs=inputs, precision=precision)
    assert report.outcome == "written", report.precision_verification
    assert report.precision is not None and report.precision.converted_nodes > 60
    kept = {k.op for k in report.precision.kept}
    assert kept <= {"Where", "Add", "Softmax"} and "Where" in kept
    assert any("float32's extreme" in k.reason for k in report.precision.kept)


def test_verify_checks_a_half_graph_with_its_types_tolerances(tmp_path: Path, digits) -> None:
    """`unfold verify model.pt half.onnx`: the half type's tolerances where none are given, the
    real inputs only where given; a bf16 graph on ONNX Runtime's CPU provider is sent to
    OpenVINO with a clear error rather than ONNX Runtime's NOT_IMPLEMENTED."""
    npz = digits[0]
    fp16 = tmp_path / "fp16.onnx"
    assert unfold.convert(DIGITS, fp16, precision="fp16", inputs=unfold.Inputs(npz=npz))
    report = unfold.verify(DIGITS, fp16, inputs=unfold.Inputs(npz=npz))
    assert report and [b.label for b in report.batches] == ["real inputs images.npz"]
    assert "fp16.onnx computes in fp16: checked with fp16's tolerances where none were " \
           "given, on the real inputs only" in report.notes
    assert not unfold.verify(DIGITS, fp16, rtol=1e-6, atol=0.0, inputs=unfold.Inputs(npz=npz))
    pytest.importorskip("openvino")
    bf16 = tmp_path / "bf16.onnx"
    assert unfold.convert(DIGITS, bf16, precision="bf16", inputs=unfold.Inputs(npz=npz))
    with pytest.raises(unfold.UnfoldError, match="computes in bf16, for which ONNX Runtime's "
                                                 "CPU provider has almost no kernels: verify "
                                                 "it with engine='openvino'"):
        unfold.verify(DIGITS, bf16)
