"""unfold.precision.int8 / `unfold quantize`: a static Q/DQ INT8 model in the form TensorRT's
explicit quantization takes (symmetric int8, a Q/DQ pair on each weight, float biases),
calibrated on the caller's data (random only when asked for, loudly), checked against fp32 and
written only where it agrees. The shipped digits ViT, folded, keeps its test-set accuracy."""

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
from unfold.precision.int8 import calibration_batches, quantize_file

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folded digits ViT, its test images as an npz it takes)."""
    folder = tmp_path_factory.mktemp("digits")
    model = folder / "digits-un.onnx"
    assert unfold.convert(CHECKPOINT_DIR / "digits-vit-un.pt2", model)
    images = folder / "images.npz"
    np.savez(images, images=np.load(DATA_DIR / "digits_test.npz")["images"])
    return model, images


def _accuracy(model: Path) -> float:
    data = np.load(DATA_DIR / "digits_test.npz")
    runner = OrtRunner(model)
    logits = runner.run({"images": data["images"]})[runner.output_names[0]]
    return float((logits.argmax(1) == data["labels"]).mean())


def test_the_folded_sample_quantizes_for_tensorrt_and_keeps_its_accuracy(
        tmp_path: Path, folded: tuple[Path, Path]) -> None:
    model, images = folded
    out = tmp_path / "int8.onnx"
    report = quantize_file(model, out, calibrate=images)
    assert report.written == out and report.agrees and not report.random_calibration
    assert report.calibration_batches == 23  # 360 images in batches of 16
    assert report.agreement[0].cosine > 0.99
    q = onnx.load(out)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == report.ops["QuantizeLinear"] > 0
    assert "MatMul" in ops and "QLinearMatMul" not in ops, "Q/DQ around float ops"
    points = [onnx.numpy_helper.to_array(t) for t in q.graph.initializer
              if t.name.endswith("_zero_point")]
    assert points and all(p.dtype == np.int8 and not p.any() for p in points), "symmetric"
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in q.graph.initializer), \
        "biases stay float (TensorRT quantizes no bias)"
    before, after = _accuracy(model), _accuracy(out)
    assert before > 0.95 and abs(after - before) <= 2 / 360, (before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"], "no temporary left"


def test_calibration_arrays_split_along_a_dynamic_batch_axis() -> None:
    from unfold.inputs import InputSpec

    arrays = {"x": np.zeros((35, 4), np.float32)}
    dynamic = [InputSpec("x", (2, 4), dynamic={0: "batch"})]
    assert [len(b["x"]) for b in calibration_batches(arrays, dynamic, 16)] == [16, 16, 3]
    assert len(calibration_batches(arrays, [InputSpec("x", (35, 4))], 16)) == 1


def test_calibration_data_or_random_batches_must_be_asked_for(folded: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    model, images = folded
    with pytest.raises(unfold.UnfoldError, match="give calibrate='data.npz'"):
        quantize_file(model, tmp_path / "q.onnx")
    with pytest.raises(unfold.UnfoldError, match="give calibrate='data.npz'"):
        quantize_file(model, tmp_path / "q.onnx", calibrate=images, random_calibration=2)
    with pytest.raises(unfold.UnfoldError, match="calibrate='.*missing.npz': no such file"):
        quantize_file(model, tmp_path / "q.onnx", calibrate=tmp_path / "missing.npz")
    assert list(tmp_path.iterdir()) == []


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "quantize", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_random_calibration_is_loud_and_a_departing_model_is_not_written(
        folded: tuple[Path, Path], tmp_path: Path) -> None:
    """Random N(0, 1) images are far from the digits: scales fitted to them leave the INT8
    model's outputs on such images at a cosine of about 0.88 to fp32's, under 0.99."""
    model, _ = folded
    out = tmp_path / "q.onnx"
    done = _cli(model, "--out", out, "--random-calibration", "4")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("warning: --random-calibration 4: the INT8 scales come from "
                                  "random inputs")
    assert "error: the INT8 model departs from" in done.stderr and "Traceback" not in \
        done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_cli_writes_a_checked_model(folded: tuple[Path, Path], tmp_path: Path) -> None:
    model, images = folded
    out = tmp_path / "q.onnx"
    done = _cli(model, "--out", out, "--calibrate", images)
    assert done.returncode == 0, done.stderr
    assert "calibrated on images.npz: 23 batches" in done.stdout and out.exists()
    again = _cli(model, "--out", tmp_path / "other.onnx", "--calibrate", tmp_path / "nope.npz")
    assert again.returncode == 2 and f"error: --calibrate {tmp_path / 'nope.npz'}: no such " \
        f"file" in again.stderr
