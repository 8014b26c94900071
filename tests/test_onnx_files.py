"""Writing ONNX files: the streaming serializer writes the same model onnx.save_model does, and
models over the protobuf limit go out with external data (the limit lowered here, so the
external-data path runs on a small model) and fold again from there."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import unfold.onnx_files as onnx_files
from tests.fold.helpers import RNG, assert_same_outputs, const, model, norm_constants
from unfold.errors import UnfoldError
from unfold.fold import ModelParts, fold_model, fold_parts
from unfold.onnx_files import (
    load_onnx,
    load_onnx_parts,
    read_parts,
    read_streaming,
    save_onnx_atomic,
    write_streaming,
)

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
    assert read_streaming(path) == read_parts(path).to_model() == onnx.load(str(path)) == m


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


def test_parts_fold_file_to_file_with_external_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `unfold fold` does: the weights apart from load to write; the new ones (arrays)
    and the kept ones (TensorProtos) both go to the data file."""
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    m = _norm_then_linear()
    big = tmp_path / "big.onnx"
    save_onnx_atomic(m, big)
    parts = load_onnx_parts(big)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in parts.weights.values()), \
        "the external data is read in"
    folded, report = fold_parts(parts)
    assert [s.status for s in report.sites] == ["folded"]
    assert any(isinstance(w, np.ndarray) for w in folded.weights.values())
    out = tmp_path / "folded.onnx"
    save_onnx_atomic(folded, out)
    stored = onnx.load(str(out), load_external_data=False)
    assert {t.name for t in stored.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL} == {
        name for name, w in load_onnx_parts(out).weights.items() if w.ByteSize() >= 1024}
    feeds = {"x": RNG.normal(size=(3, 64)).astype(np.float32)}
    assert_same_outputs(m, onnx.load(str(out)), feeds)  # onnx's own reader agrees


def test_weights_in_typed_fields_and_constant_node_values_are_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """helper.make_tensor fills float_data, not raw_data; a Constant node's value becomes an
    initializer whose TensorProto has another name. Both in the file and in external data."""
    table = RNG.normal(size=(16, 64)).astype(np.float32)
    nodes = [N("Constant", [], ["table"], value=helper.make_tensor(
                 "", onnx.TensorProto.FLOAT, table.shape, table.reshape(-1).tolist())),
             N("Add", ["x", "table"], ["t"]),
             N("Mul", ["t", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("MatMul", ["n", "W"], ["y"], name="fc")]
    weight = helper.make_tensor("W", onnx.TensorProto.FLOAT, (64, 8),
                                RNG.normal(size=64 * 8).tolist())
    m = model(nodes, norm_constants(64) + [weight], {"x": ["N", 16, 64]}, {"y": ["N", 16, 8]})
    feeds = {"x": RNG.normal(size=(2, 16, 64)).astype(np.float32)}
    for limit in (onnx_files.PROTOBUF_LIMIT, 4096):
        monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", limit)
        path = tmp_path / f"typed-{limit}.onnx"
        save_onnx_atomic(m, path)
        assert_same_outputs(m, onnx.load(str(path)), feeds)
        folded, _ = fold_parts(load_onnx_parts(path))
        assert "table" in folded.weights, "the Constant node's value, now an initializer"
        out = tmp_path / f"typed-{limit}-folded.onnx"
        save_onnx_atomic(folded, out)
        assert_same_outputs(m, onnx.load(str(out)), feeds)


def test_streaming_writes_parts_as_their_model() -> None:
    m = _norm_then_linear()
    folded, _ = fold_parts(ModelParts.viewing(m))
    buffer = io.BytesIO()
    write_streaming(folded, buffer)
    assert onnx.load_from_string(buffer.getvalue()) == folded.to_model()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("external", [False, True], ids=["inline", "external_data"])
def test_a_new_file_gets_the_mode_open_would_give_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int, external: bool) -> None:
    """Not the temporary file's private 0600: a server running as another user reads it."""
    if external:
        monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    before = os.umask(umask)
    try:
        save_onnx_atomic(_norm_then_linear(), tmp_path / "m.onnx")
    finally:
        os.umask(before)
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == (["m.onnx", "m.onnx.data"] if external else ["m.onnx"])
    assert all(_mode(p) == 0o666 & ~umask for p in written), [oct(_mode(p)) for p in written]


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external_data"])
def test_overwriting_keeps_the_replaced_files_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool) -> None:
    if external:
        monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    out = tmp_path / "m.onnx"
    save_onnx_atomic(_norm_then_linear(), out)
    written = sorted(tmp_path.iterdir())
    for path, mode in zip(written, (0o640, 0o604), strict=False):
        path.chmod(mode)
    save_onnx_atomic(_norm_then_linear(), out)
    assert [oct(_mode(p)) for p in sorted(tmp_path.iterdir())] == \
        [oct(m) for m in (0o640, 0o604)[:len(written)]]


@pytest.mark.parametrize(("domain", "named"), [("", "the default ONNX domain"),
                                               ("ai.onnx.ml", "domain 'ai.onnx.ml'")])
@pytest.mark.parametrize("load", [load_onnx, load_onnx_parts], ids=["model", "parts"])
def test_an_opset_newer_than_onnx_knows_is_refused_at_load(
        tmp_path: Path, domain: str, named: str, load) -> None:
    m = _norm_then_linear()
    if domain:
        m.opset_import.append(helper.make_opsetid(domain, 1))
    next(o for o in m.opset_import if o.domain == domain).version = 999
    path = tmp_path / "future.onnx"
    onnx.save(m, path)
    newest = onnx.defs.onnx_opset_version() if not domain else max(
        s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == domain)
    with pytest.raises(UnfoldError, match=rf"future.onnx declares opset 999 of {named}; the "
                                          rf"installed onnx \S+ supports opsets up to {newest}$"):
        load(path)
