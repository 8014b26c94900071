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
    save_onnx_atomic(_norm_then_linear(), out, force=True)
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


# --- what unfold writes: regular files only, inside the output's folder, never a clobber
# without force, never a file the input reads (issue 17's hostile cases)


def _big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "big.onnx") -> Path:
    """A model saved with external data (the limit lowered), in its own folder."""
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    save_onnx_atomic(_norm_then_linear(), folder / name)
    return folder / name


def test_a_link_planted_at_the_old_temporary_name_redirects_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data used to be written through `OUT.data.tmp`, opened by name: a symlink planted
    there sent the weights into the victim. Now nothing is written by a guessable name."""
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data.tmp").symlink_to(victim)
    unrelated = tmp_path / "notes.onnx.data.tmp"
    unrelated.write_text("mine")
    save_onnx_atomic(_norm_then_linear(), out)
    assert victim.read_text() == "precious" and (tmp_path / "m.onnx.data.tmp").is_symlink()
    assert unrelated.read_text() == "mine"
    assert (tmp_path / "m.onnx.data").is_file() and not (tmp_path / "m.onnx.data").is_symlink()


def test_an_existing_data_file_is_replaced_only_with_force(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_text("someone's data")
    with pytest.raises(UnfoldError, match="m.onnx.data exists; pass force=True"):
        save_onnx_atomic(_norm_then_linear(), out)
    assert (tmp_path / "m.onnx.data").read_text() == "someone's data" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.data"]
    save_onnx_atomic(_norm_then_linear(), out, force=True)
    assert load_onnx(out) is not None


def test_only_regular_files_are_replaced_even_with_force(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnfoldError, match="is not a regular file \\(a FIFO\\): unfold replaces "
                                          "only regular files"):
        onnx_files.check_output_path(fifo, force=True)
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        pytest.skip("no mknod here")
    with pytest.raises(UnfoldError, match="a character device"):
        save_onnx_atomic(_norm_then_linear(), device, force=True)
    assert stat.S_ISCHR(device.stat().st_mode) and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_run_that_lost_the_race_for_its_output_clobbers_nothing(tmp_path: Path) -> None:
    """Both runs passed the existence check; the other one published first."""
    out = tmp_path / "m.onnx"
    onnx_files.check_output_path(out, force=False)
    with onnx_files.staged_onnx(_norm_then_linear(), out) as staged:
        out.write_text("the other run's model")
        with pytest.raises(UnfoldError, match="exists \\(written since this run began\\?\\)"):
            staged.publish(force=False)
    assert out.read_text() == "the other run's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_no_output_may_be_a_file_the_input_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _big(tmp_path, monkeypatch)
    parts = load_onnx_parts(big)
    data = big.parent / "big.onnx.data"
    assert parts.sources == {big.resolve(), data.resolve()}
    for out in (data, big):  # its data file; the model itself
        with pytest.raises(UnfoldError, match="is a file the input reads"):
            onnx_files.check_not_read(out, parts.sources)


# --- what unfold reads: clear words on odd files, memory bounded by what the model holds


def test_a_model_that_declares_a_huge_input_is_refused_at_load(tmp_path: Path) -> None:
    """172 bytes, an input of 2^29 floats and a ConstantOfShape of its shape: shape inference
    with data propagation took 23 GB for it before."""
    n = 2 ** 29
    nodes = [N("Shape", ["x"], ["s"]),
             N("ConstantOfShape", ["s"], ["z"],
               value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])),
             N("Add", ["x", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, [n])], [helper.make_tensor_value_info(
            "y", onnx.TensorProto.FLOAT, [n])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "bomb.onnx"
    onnx.save(m, path)
    assert path.stat().st_size < 500
    for load in (load_onnx, load_onnx_parts):
        with pytest.raises(UnfoldError, match="input 'x' declares 536870912 elements \\(2.0 "
                                              "GiB\\), more than unfold holds"):
            load(path)
    with pytest.raises(UnfoldError, match="declares 536870912 elements"):
        fold_model(m)


def test_an_initializer_whose_data_does_not_fill_its_dims_is_refused(tmp_path: Path) -> None:
    m = _norm_then_linear()
    weight = next(t for t in m.graph.initializer if t.name == "W")
    weight.dims[:] = [1 << 14, 1 << 15]  # 2 GiB of float32 claimed over the same bytes
    path = tmp_path / "liar.onnx"
    onnx.save(m, path)
    with pytest.raises(UnfoldError, match="the initializer 'W' holds 8192 bytes of data, but "
                                          "its dims \\[16384, 32768\\] and type say"):
        load_onnx_parts(path)


def test_a_missing_or_odd_data_file_is_named(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    big = _big(tmp_path, monkeypatch)
    data = big.parent / "big.onnx.data"
    data.unlink()
    for load in (load_onnx, load_onnx_parts):
        with pytest.raises(UnfoldError, match="stored in the data file 'big.onnx.data', which "
                                              "is missing"):
            load(big)
    os.mkfifo(data)
    with pytest.raises(UnfoldError, match="its data file 'big.onnx.data' is not a regular file "
                                          "\\(a FIFO\\)"):
        load_onnx_parts(big)


def test_a_fifo_given_as_the_model_is_named(tmp_path: Path) -> None:
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    with pytest.raises(UnfoldError, match="is not a regular file \\(a FIFO\\)"):
        load_onnx_parts(fifo)


def test_duplicate_node_names_are_refused(tmp_path: Path) -> None:
    m = _norm_then_linear()
    for node in m.graph.node:
        node.name = "same"
    path = tmp_path / "dup.onnx"
    onnx.save(m, path)
    with pytest.raises(UnfoldError, match="4 nodes share the name 'same'"):
        load_onnx_parts(path)
