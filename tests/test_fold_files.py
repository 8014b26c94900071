"""unfold.fold_file (unfold/fold_files.py): an ONNX file folded, checked against itself in ONNX
Runtime, and only then written; over the protobuf limit (lowered here) the same through
external data, the candidate run from the very files that are published."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import unfold
from unfold import onnx_files
from unfold.errors import UnfoldError

from .fold.helpers import RNG, assert_same_outputs, const, model, norm_constants

N = onnx.helper.make_node


def _norm_then_linear(path: Path, keep_initializers_as_inputs: bool = False) -> Path:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("MatMul", ["n", "W"], ["m"], name="fc"), N("Add", ["m", "c"], ["y"])]
    m = model(nodes, norm_constants(64) + [const("W", RNG.normal(size=(64, 16))),
                                           const("c", RNG.normal(size=16))],
              {"x": ["batch", 64]}, {"y": ["batch", 16]})
    if keep_initializers_as_inputs:  # what torch.onnx.export(keep_initializers_as_inputs=True)
        m.graph.input.extend(onnx.helper.make_tensor_value_info(
            t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    onnx.save(m, path)
    return path


def test_fold_file_verifies_then_writes(tmp_path: Path) -> None:
    src, out = _norm_then_linear(tmp_path / "m.onnx"), tmp_path / "f.onnx"
    report = unfold.fold_file(src, out)
    assert report and report.outcome == "written" and report.written == out
    assert report.verification is not None and report.verification
    assert {b.shapes["x"][0] for b in report.verification.batches} == {1, 2, 5}
    assert set(report.seconds) == {"load", "reference", "fold", "stage", "verify", "write"}
    assert_same_outputs(onnx.load(src), onnx.load(out),
                        {"x": RNG.normal(size=(3, 64)).astype(np.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx", "m.onnx"]


def test_over_the_limit_it_verifies_and_publishes_external_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)  # the 2 GiB limit, scaled down
    src = tmp_path / "big.onnx"
    onnx_files.save_onnx_atomic(onnx.load(_norm_then_linear(tmp_path / "m.onnx")), src)
    assert (tmp_path / "big.onnx.data").is_file()
    out = tmp_path / "folded.onnx"
    report = unfold.fold_file(src, out)
    assert report.outcome == "written" and report.verification
    assert (tmp_path / "folded.onnx.data").is_file()
    assert not list(tmp_path.glob(".*")), "the staging folder is gone"
    assert_same_outputs(onnx.load(tmp_path / "m.onnx"), onnx.load(str(out)),
                        {"x": RNG.normal(size=(3, 64)).astype(np.float32)})


def test_an_initializer_a_caller_may_feed_is_not_folded_but_refused(tmp_path: Path) -> None:
    """keep_initializers_as_inputs=True exports list every weight as an input too: a caller
    may feed them, and a fold would bake them into other weights; before, they were folded and
    silently dropped from the inputs."""
    src = _norm_then_linear(tmp_path / "m.onnx", keep_initializers_as_inputs=True)
    with pytest.raises(UnfoldError, match="are also graph inputs.*keep_initializers_as_inputs"):
        unfold.fold_file(src, tmp_path / "f.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_its_options_are_checked_before_any_work(tmp_path: Path) -> None:
    src = _norm_then_linear(tmp_path / "m.onnx")
    for kwargs, message in (({"skip": "producer"}, "skip='producer': expected rule names"),
                            ({"skip": ["nope"]}, "skip='nope': valid: "),
                            ({"max_scale": 1}, "max_scale=1: must be a number above 1"),
                            ({"seed": -1}, "seed=-1"), ({"atol": "1e-4"}, "atol")):
        with pytest.raises(UnfoldError, match=message):
            unfold.fold_file(src, tmp_path / "f.onnx", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_model_the_fold_leaves_as_it_is_is_not_run_and_says_why(tmp_path: Path) -> None:
    """A bfloat16 model: its norms are reported, the model is written unchanged, and nothing is
    run (ONNX Runtime's CPU provider has no bfloat16 kernels; random bfloat16 inputs crashed
    the input generator before)."""
    import ml_dtypes

    def bf16(name: str, value) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(
            np.asarray(value, np.float32).astype(ml_dtypes.bfloat16), name)

    nodes = [N("Mul", ["x", "s"], ["a"], name="norm_mul"), N("Add", ["a", "b"], ["n"]),
             N("MatMul", ["n", "W"], ["y"], name="fc")]
    bf = onnx.TensorProto.BFLOAT16
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", bf, ["batch", 8])],
        [onnx.helper.make_tensor_value_info("y", bf, ["batch", 4])],
        [bf16("s", RNG.uniform(0.5, 2, 8)), bf16("b", RNG.normal(size=8)),
         bf16("W", RNG.normal(size=(8, 4)))])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "bf16.onnx"
    onnx.save(m, src)
    report = unfold.fold_file(src, tmp_path / "f.onnx")
    assert report.outcome == "written" and report.verification is None
    assert any(n.startswith("not verified: the fold leaves this model as it is (bfloat16 model")
               for n in report.notes), report.notes
    assert onnx.load(tmp_path / "f.onnx").graph == m.graph
    strict = unfold.fold_file(src, tmp_path / "g.onnx", strict=True)
    assert strict.outcome == "norms left" and not (tmp_path / "g.onnx").exists()


def test_the_shipped_sample_folds_from_a_file_with_the_default_check(tmp_path: Path) -> None:
    """An exact fold of the digits ViT, checked on N(0, 1) images (it was trained on [0, 1]):
    the two fp32 graphs round differently by up to 2.5e-5 of the output's scale, which the fp32
    default of 1e-5 refused; FOLD_RTOL takes it, and still refuses a weight off by 0.1%."""
    import io
    import warnings

    import torch

    from sample_models.registry import CHECKPOINT_DIR
    from unfold.fold_files import FOLD_RTOL

    program = torch.export.load(str(CHECKPOINT_DIR / "digits-vit-un.pt2"))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(program, (torch.rand(2, 1, 8, 8),), buffer, dynamo=True,
                          verbose=False)
    src = tmp_path / "digits.onnx"
    src.write_bytes(buffer.getvalue())
    report = unfold.fold_file(src, tmp_path / "f.onnx")
    assert report.outcome == "written", report.verification
    assert report.verification is not None
    worst = max(o.max_abs / o.scale for b in report.verification.batches for o in b.outputs)
    assert worst < FOLD_RTOL
