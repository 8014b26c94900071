"""`unfold fold`, `unfold inspect`, `unfold rules`: results, reports, and every bad input giving
`error: ...`, the right exit code, no traceback and no file written or overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from cli.app import app
from tests.fold.helpers import RNG, const, model, norm_constants, post_norm_stack

N = helper.make_node
runner = CliRunner()


def _write(tmp_path: Path, extra_reader: bool = False) -> Path:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["normed"], name="norm_add"),
             N("MatMul", ["normed", "W"], ["mm"], name="fc"), N("Add", ["mm", "c"], ["y"])]
    outputs = {"y": ["N", 4]}
    if extra_reader:
        nodes.append(N("Relu", ["normed"], ["r"], name="act"))
        outputs["r"] = ["N", 8]
    m = model(nodes, norm_constants(8) + [const("W", RNG.normal(size=(8, 4))),
                                          const("c", RNG.normal(size=4))],
              {"x": ["N", 8]}, outputs)
    path = tmp_path / ("partial.onnx" if extra_reader else "model.onnx")
    onnx.save(m, path)
    return path


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_user_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert f"error: {text}" in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_fold_writes_the_folded_model_and_reports(tmp_path: Path) -> None:
    src, out = _write(tmp_path), tmp_path / "folded.onnx"
    result = _invoke("fold", src, "--out", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "written" and report["verified"] is True
    assert report["verification"]["batches"], "checked against the input before writing"
    fold = report["fold"]
    assert fold["folded"] == 1 and fold["no_norm_left"] is True
    assert fold["ops_after"] == {"Add": 1, "MatMul": 1}
    assert "PASSED" in result.stderr and f"wrote {out}" in result.stderr
    folded = onnx.load(out)
    onnx.checker.check_model(folded, full_check=True)
    assert sorted(n.op_type for n in folded.graph.node) == ["Add", "MatMul"]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def _defective_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold engine with a defect: its result's MatMul weight is off by 1e-3 of itself
    (standing in for a wrong transfer function, which the engine must never ship)."""
    import unfold.fold

    real = unfold.fold.fold_parts

    def wrong(parts, **kwargs):
        folded, report = real(parts, **kwargs)
        matmul = next(n for n in folded.skeleton.graph.node if n.op_type == "MatMul")
        weight = onnx.numpy_helper.to_array(folded.weights[matmul.input[1]])
        folded.weights[matmul.input[1]] = (weight * 1.001).astype(weight.dtype)
        return folded, report

    monkeypatch.setattr(unfold.fold, "fold_parts", wrong)


def test_fold_verifies_before_writing_and_a_defect_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _defective_fold(monkeypatch)
    src, out = _write(tmp_path), tmp_path / "folded.onnx"
    out.write_bytes(b"the user's file")
    result = _invoke("fold", src, "--out", out, "--force", "--json")
    assert result.exit_code == 1, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "mismatch" and report["written"] is None
    assert report["verification"]["divergence"]["op_type"] == "MatMul"
    assert f"does not compute what {src} does; nothing written" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert out.read_bytes() == b"the user's file", "nothing of the user's replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded.onnx", "model.onnx"]


def test_no_verify_writes_unchecked_and_says_so_loudly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _defective_fold(monkeypatch)
    src, out = _write(tmp_path), tmp_path / "folded.onnx"
    result = _invoke("fold", src, "--out", out, "--no-verify", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    assert "warning: --no-verify: the folded model will NOT be checked" in result.stderr
    report = json.loads(result.stdout)
    assert report["verification"] is None and report["verified"] is False
    assert any("NOT checked" in note for note in report["notes"])
    assert out.is_file()


def test_fold_verifies_a_dynamic_model_at_sizes_it_says(tmp_path: Path) -> None:
    result = _invoke("fold", _write(tmp_path), "--out", tmp_path / "f.onnx", "--json")
    report = json.loads(result.stdout)
    assert {b["shapes"]["x"][0] for b in report["verification"]["batches"]} == {1, 2, 5}
    assert any("batch=2" in note for note in report["notes"]), report["notes"]
    given = _invoke("fold", _write(tmp_path), "--out", tmp_path / "g.onnx", "--json",
                    "--input-shape", "x:3x8")
    shapes = {b["shapes"]["x"][0] for b in json.loads(given.stdout)["verification"]["batches"]}
    assert 3 in shapes


def test_fold_refuses_two_initializers_of_one_name(tmp_path: Path) -> None:
    src = _write(tmp_path)
    m = onnx.load(src)
    m.graph.initializer.append(m.graph.initializer[0])
    onnx.save(m, src)
    out = tmp_path / "f.onnx"
    _assert_user_error(_invoke("fold", src, "--out", out), 2,
                       "the model has two initializers named 'norm.scale'")
    assert not out.exists()


def test_fold_table_names_each_site(tmp_path: Path) -> None:
    result = _invoke("fold", _write(tmp_path), "--out", tmp_path / "f.onnx")
    assert result.exit_code == 0
    assert "norm_mul" in result.stdout and "folded" in result.stdout and "fc" in result.stdout


def test_strict_with_a_norm_left_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    result = _invoke("fold", _write(tmp_path, extra_reader=True), "--out", out, "--strict",
                     "--json")
    assert result.exit_code == 1
    (site,) = json.loads(result.stdout)["fold"]["sites"]
    assert site["status"] == "partial"
    assert site["reasons"] == ["reader Relu 'act': Relu does not commute with a shift"]
    assert "error: --strict: normalization left" in result.stderr
    assert not out.exists()


def test_missing_input(tmp_path: Path) -> None:
    _assert_user_error(_invoke("fold", tmp_path / "nope.onnx", "--out", tmp_path / "o.onnx"),
                       2, f"{tmp_path / 'nope.onnx'}: no such file")


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(300)],
                         ids=["empty", "random_bytes"])
def test_not_an_onnx_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    result = _invoke("fold", bad, "--out", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"error: {bad}" in result.stderr


def test_truncated_onnx(tmp_path: Path) -> None:
    src = _write(tmp_path)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(src.read_bytes()[:-40])
    result = _invoke("fold", truncated, "--out", tmp_path / "o.onnx")
    assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr


def test_an_opset_newer_than_onnx_knows_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    m = onnx.load(_write(tmp_path))
    m.opset_import[0].version = 999
    onnx.save(m, tmp_path / "future.onnx")
    out = tmp_path / "o.onnx"
    _assert_user_error(_invoke("fold", tmp_path / "future.onnx", "--out", out), 2,
                       f"{tmp_path / 'future.onnx'} declares opset 999 of the default ONNX "
                       f"domain; the installed onnx")
    assert not out.exists()


def test_existing_output_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    out.write_bytes(b"precious")
    _assert_user_error(_invoke("fold", _write(tmp_path), "--out", out), 2,
                       f"{out} exists; pass --force to overwrite it")
    assert out.read_bytes() == b"precious"
    assert _invoke("fold", _write(tmp_path), "--out", out, "--force").exit_code == 0
    assert out.read_bytes() != b"precious"


def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    src = _write(tmp_path)
    before = src.read_bytes()
    _assert_user_error(_invoke("fold", src, "--out", src, "--force"), 2,
                       f"--out {src} is the input file")
    assert src.read_bytes() == before


def test_output_folder_missing(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "o.onnx"
    _assert_user_error(_invoke("fold", _write(tmp_path), "--out", out), 2,
                       f"cannot write {out}: the folder {out.parent} does not exist")


@pytest.mark.parametrize(("args", "message"), [
    (["fold", "m.onnx", "--out", "o.onnx", "--skip", "nope"],
     "Invalid value for --skip: 'nope' is not a rule; valid: compose, producer, embedding, "
     "consumer-linear, consumer-conv, token-linear, attention, layout, select, pad, pool, "
     "concat, constant-op, residual-add, gate, activation"),
    (["convert", "m.pt", "--out", "o.onnx", "--exporter", "nosuch"],
     "Invalid value for --exporter: 'nosuch' is not an exporter; valid: auto, dynamo, "
     "torchscript"),
    (["verify", "m.pt", "m.onnx", "--engine", "nosuch"],
     "Invalid value for --engine: 'nosuch' is not an engine; valid: ort, openvino, trt, torch"),
])
def test_a_name_outside_its_registry_fails_while_parsing(tmp_path: Path, args: list[str],
                                                         message: str) -> None:
    """(the files do not even exist: nothing is read before the command line is valid)"""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_help_lists_each_registry_and_shows_flags_as_flags() -> None:
    fold_help = runner.invoke(app, ["fold", "--help"]).stdout
    assert "--skip RULE" in fold_help and "consumer-linear" in fold_help
    assert "--force " in fold_help and "<bool>" not in fold_help
    verify_help = runner.invoke(app, ["verify", "--help"]).stdout
    assert "What runs CANDIDATE: ort, openvino, trt, torch" in verify_help


def _ops(path: Path) -> list[str]:
    return sorted(n.op_type for n in onnx.load(path).graph.node)


def test_max_scale_re_scales_a_post_norm_stream_with_reported_muls(tmp_path: Path) -> None:
    src = tmp_path / "post.onnx"
    onnx.save(post_norm_stack(6, 8), src)
    free, bounded = tmp_path / "free.onnx", tmp_path / "bounded.onnx"
    assert _invoke("fold", src, "--out", free).exit_code == 0
    result = _invoke("fold", src, "--out", bounded, "--max-scale", "4", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    rescales = [p for site in json.loads(result.stdout)["fold"]["sites"] for p in site["path"]
                if "re-scaled" in p]
    assert rescales and all("beyond --max-scale 4" in p for p in rescales), rescales
    extra = _ops(bounded)
    for op in _ops(free):
        extra.remove(op)
    assert extra == ["Mul"] * len(rescales), "one Mul per reported re-scale, nothing else"


def test_fp16_bounds_the_stream_at_64(tmp_path: Path) -> None:
    src = tmp_path / "post.onnx"
    onnx.save(post_norm_stack(6, 8), src)
    result = _invoke("fold", src, "--out", tmp_path / "f.onnx", "--fp16", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    paths = [p for site in json.loads(result.stdout)["fold"]["sites"] for p in site["path"]]
    assert any("beyond --max-scale 64" in p for p in paths), paths


def test_fp16_names_a_site_whose_folded_weights_fp16_cannot_hold(tmp_path: Path) -> None:
    src = tmp_path / "big.onnx"
    m = onnx.load(_write(tmp_path))
    for init in m.graph.initializer:
        if init.name == "norm.scale":  # W' = diag(s)·W: past 65504
            init.CopyFrom(const("norm.scale", np.full(8, 1e5)))
    onnx.save(m, src)
    out = tmp_path / "f.onnx"
    result = _invoke("fold", src, "--out", out, "--fp16")
    assert result.exit_code == 0, result.output + result.stderr
    assert "warning: --fp16: site norm_mul's folded weights reach" in result.stderr
    assert "beyond fp16's 65504" in result.stderr
    assert out.exists(), "a warning, not a refusal: fp32 engines run it"
    quiet = _invoke("fold", _write(tmp_path), "--out", tmp_path / "g.onnx", "--fp16")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


@pytest.mark.parametrize("bound", ["1", "0.5", "-3"])
def test_max_scale_must_be_above_1(tmp_path: Path, bound: str) -> None:
    out = tmp_path / "o.onnx"
    _assert_user_error(_invoke("fold", _write(tmp_path), "--out", out, f"--max-scale={bound}"),
                       2, f"--max-scale {float(bound):g}: must be a number above 1 (a factor "
                          f"by which folded weights may grow)")
    assert not out.exists()


def test_inspect_lists_offline_and_online_norms(tmp_path: Path) -> None:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="un_mul"),
             N("Add", ["s", "norm.shift"], ["normed"], name="un_add"),
             N("MatMul", ["normed", "W"], ["mm0"], name="fc"),
             N("Add", ["mm0", "c"], ["mm"], name="fc_bias"),
             N("LayerNormalization", ["mm", "g", "b"], ["y"], name="ln", axis=-1)]
    m = model(nodes, norm_constants(8) + [const("W", RNG.normal(size=(8, 4))),
                                          const("c", RNG.normal(size=4)),
                                          const("g", np.ones(4)), const("b", np.zeros(4))],
              {"x": ["N", 8]}, {"y": ["N", 4]})
    path = tmp_path / "mixed.onnx"
    onnx.save(m, path)
    result = _invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(s["name"], s["status"]) for s in report["sites"]] == [("un_mul", "folded")]
    assert [(o["name"], o["kind"]) for o in report["online"]] == [("ln", "LayerNorm")]
    assert report["no_norm_left"] is False
    assert not list(tmp_path.glob("*.onnx"))[1:], "inspect writes nothing"
    table = _invoke("inspect", path).stdout
    assert "would fold" in table and "online: stays" in table
    assert "1 offline sites: 1 would fold" in table
    assert "sites folded" not in table and "ops before" not in table, "it changes nothing"


def test_rules_lists_the_registry() -> None:
    result = _invoke("rules")
    assert result.exit_code == 0
    for name in ("compose", "producer", "embedding", "consumer-linear", "consumer-conv",
                 "token-linear", "attention", "layout", "select", "pad", "pool", "concat",
                 "constant-op", "residual-add", "gate", "activation"):
        assert name in result.stdout
    assert "PASSED" in result.stderr


def test_rules_as_json() -> None:
    result = _invoke("rules", "--json")
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    by_name = {row["rule"]: row for row in found["rules"]}
    assert by_name["consumer-linear"]["kind"] == "sink"
    assert by_name["consumer-linear"]["ops"] == ["Gemm", "MatMul"]
    assert "Pad" in by_name["pad"]["ops"] and by_name["pad"]["algebra"]
    by_op = {row["op"]: row for row in found["ops"]}
    assert len(by_op) == len(found["ops"]), "one row, one handler per op"
    assert by_op["Add"]["handler"] == "arithmetic"
    assert by_op["Add"]["rules"] == ["constant-op", "residual-add"]
    assert by_op["Mul"]["rules"] == ["constant-op", "gate"]
    assert by_op["Gemm"]["rules"] == ["consumer-linear", "producer"]
    assert by_op["MatMul"]["rules"] == ["consumer-linear", "token-linear", "attention",
                                        "producer"]
    assert by_op["Gather"]["backward"] and not by_op["Softmax"]["backward"]
    assert not by_op["Div"]["backward"] and not by_op["Split"]["backward"]


def test_strict_fails_on_a_quantized_model_and_inspect_says_what_it_is(tmp_path: Path) -> None:
    nodes = [N("QuantizeLinear", ["x", "qs", "qz"], ["xq"]),
             N("DequantizeLinear", ["xq", "qs", "qz"], ["xd"]),
             N("Mul", ["xd", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["y"], name="norm_add")]
    m = model(nodes, [*norm_constants(8), const("qs", 0.05),
                      onnx.numpy_helper.from_array(np.array(0, np.int8), "qz")],
              {"x": [2, 8]}, {"y": [2, 8]})
    src, out = tmp_path / "q.onnx", tmp_path / "f.onnx"
    onnx.save(m, src)
    result = _invoke("fold", src, "--out", out, "--strict")
    assert result.exit_code == 1 and not out.exists()
    assert "not reached: quantized model" in result.stdout
    shown = _invoke("inspect", src)
    assert shown.exit_code == 0 and "fold the fp32 model, then quantize" in shown.stdout


def test_fold_never_writes_over_a_file_its_input_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import unfold.onnx_files as onnx_files

    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 4096)
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("MatMul", ["n", "W"], ["y"], name="fc")]
    m = model(nodes, norm_constants(64) + [const("W", RNG.normal(size=(64, 32)))],
              {"x": ["N", 64]}, {"y": ["N", 32]})
    src = tmp_path / "big.onnx"
    onnx_files.save_onnx_atomic(m, src)
    data = tmp_path / "big.onnx.data"
    before = data.read_bytes()
    _assert_user_error(_invoke("fold", src, "--out", data, "--force"), 2,
                       f"--out {data}: {data} is a file the input reads")
    assert data.read_bytes() == before


def test_fold_and_inspect_refuse_a_model_that_declares_more_than_it_holds(
        tmp_path: Path) -> None:
    nodes = [N("Shape", ["x"], ["s"]),
             N("ConstantOfShape", ["s"], ["z"],
               value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])),
             N("Add", ["x", "z"], ["y"])]
    m = model(nodes, [], {"x": [2 ** 29]}, {"y": [2 ** 29]})
    src = tmp_path / "bomb.onnx"
    onnx.save(m, src)
    for args in (["fold", src, "--out", tmp_path / "f.onnx"], ["inspect", src]):
        _assert_user_error(_invoke(*args), 2, f"{src}: input 'x' declares 536870912 elements")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.onnx"]
