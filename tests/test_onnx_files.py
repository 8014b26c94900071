"""Writing ONNX files: the streaming serializer writes the same model onnx.save_model does, and
models over the protobuf limit go out with external data (the limit lowered here, so the
external-data path runs on a small model) and fold again from there."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import unfold.onnx_files as onnx_files
from tests.fold.helpers import RNG, assert_same_outputs, const, model, norm_constants
from unfold.errors import UnfoldError
from unfold.fold import fold_model
from unfold.onnx_files import load_onnx, read_streaming, save_onnx_atomic, write_streaming

N = helper.make_node


def _norm_then_linear() -> onnx.ModelProto:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("MatMul", ["n", "W"], ["m"], name="fc"), N("Add", ["m", "c"], ["y"])]
    m = model(nodes, norm_constants(64) + [const("W", RNG.normal(size=(64, 32))),
                                           const("c", RNG.normal(size=32))],
              {"x": ["N", 64]}, {"y": ["N", 32]})
    m.doc_string = "a model"
    m.producer_name = "tests"
    helper.set_model_props(m, {"source": "unfold tests"})
    return m


def test_streaming_writes_the_same_model() -> None:
    m = _norm_then_linear()
    buffer = io.BytesIO()
    write_streaming(m, buffer)
    assert len(buffer.getvalue()) == m.ByteSize()
    assert onnx.load_from_string(buffer.getvalue()) == m


def test_streaming_reads_what_onnx_load_reads(tmp_path: Path) -> None:
    m = _norm_then_linear()
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path))
    assert read_streaming(path) == onnx.load(str(path)) == m


@pytest.mark.parametrize("cut", [1, 100, -1])
def test_a_truncated_file_is_refused(tmp_path: Path, cut: int) -> None:
    data = _norm_then_linear().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:cut])
    with pytest.raises(UnfoldError, match="is not an ONNX model \\(or is truncated\\)"):
        load_onnx(path)


def test_over_the_limit_the_weights_go_to_external_data_and_fold_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)  # the 2 GiB limit, scaled down
    m = _norm_then_linear()
    reference = onnx.ModelProto()
    reference.CopyFrom(m)
    big = tmp_path / "big.onnx"
    save_onnx_atomic(m, big)
    assert (tmp_path / "big.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    stored = onnx.load(str(big), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)

    loaded = load_onnx(big)  # its external data read from beside it
    folded, report = fold_model(loaded, in_place=True)
    assert [s.status for s in report.sites] == ["folded"]
    out = tmp_path / "folded.onnx"
    save_onnx_atomic(folded, out)
    assert (tmp_path / "folded.onnx.data").is_file()
    feeds = {"x": RNG.normal(size=(3, 64)).astype(np.float32)}
    assert_same_outputs(reference, load_onnx(out), feeds)


def test_folding_in_place_changes_the_given_model_only_when_asked() -> None:
    m = _norm_then_linear()
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    folded, _ = fold_model(m)
    assert m == copy, "without in_place the caller's model is left as it was"
    folded, _ = fold_model(m, in_place=True)
    assert folded is m
    assert not {"Mul"} & {n.op_type for n in m.graph.node}
    assert_same_outputs(copy, folded, {"x": RNG.normal(size=(3, 64)).astype(np.float32)})
