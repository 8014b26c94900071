"""`unfold convert` and `unfold verify` on the command line: results, exit codes, and every
bad input giving `error: ...`, no traceback and no file written or overwritten; Ctrl-C
leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from sample_models.registry import CHECKPOINT_DIR

STATE = CHECKPOINT_DIR / "digits-vit-un.state_dict.pt"
# its digits-vit-un.arch.json names this factory: giving it confirms the file may run it
CONFIRM = ("--arch", "sample_models.vit:digits_vit")
runner = CliRunner()


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _assert_user_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert f"error: {text}" in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli") / "digits.onnx"
    result = _invoke("convert", STATE, *CONFIRM, "--out", out, "--exporter", "torchscript",
                     "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].startswith("PASSED |")
    return out, json.loads(result.stdout)


def test_convert_writes_and_reports_as_json(converted: tuple[Path, dict]) -> None:
    out, report = converted
    assert out.is_file() and report["written"] == str(out)
    assert report["verified"] and report["fold"]["folded"] == 9
    assert set(report["seconds"]) == {"load", "export", "fold", "verify", "write"}
    assert report["verification"]["worst"][0]["passed"]


def test_convert_table_and_progress(tmp_path: Path) -> None:
    result = _invoke("convert", STATE, *CONFIRM, "--out", tmp_path / "m.onnx", "--exporter",
                     "torchscript")
    assert result.exit_code == 0, result.output
    for text in ("state dict", "normalization sites", "9 of 9 offline sites folded",
                 "max abs", "time per stage", "│ blocks.3.norm2 "):
        assert text in result.stdout, text
    assert "[unfold] exporting to ONNX ..." in result.stderr


def test_verify_model_against_onnx_and_onnx_against_onnx(
        converted: tuple[Path, dict]) -> None:
    out, _ = converted
    result = _invoke("verify", STATE, *CONFIRM, out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]
    same = _invoke("verify", out, out, "--input-shape", "4x1x8x8")
    assert same.exit_code == 0, same.output


def test_verify_names_the_node_where_outputs_depart(converted: tuple[Path, dict],
                                                     tmp_path: Path) -> None:
    out, _ = converted
    model = onnx.load(out)
    weight = next(i for i in model.graph.initializer if onnx.numpy_helper.to_array(i).ndim == 2)
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, tmp_path / "broken.onnx")
    reader = next(n for n in model.graph.node if weight.name in n.input)
    result = _invoke("verify", out, tmp_path / "broken.onnx", "--input-shape", "2x1x8x8")
    _assert_user_error(result, 1, "outputs differ beyond tolerance")
    assert f"first departing node: {reader.name} ({reader.op_type})" in result.stdout


def test_a_missing_shape_is_hinted_in_the_models_own_names_and_dims(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "a.onnx")
    result = _invoke("verify", tmp_path / "a.onnx", tmp_path / "a.onnx")
    _assert_user_error(result, 2, "no shape for input(s) x: the model takes x: Nx1x8x8; give "
                                  "the varying dimensions, e.g. --input-shape x:1x1x8x8 (or "
                                  "real inputs with --inputs FILE.npz)")
    assert "images" not in result.stderr and "224" not in result.stderr
    # real inputs stand in for the shape, as the hint says
    np.savez(tmp_path / "real.npz", x=np.random.default_rng(0).random((5, 1, 8, 8), np.float32))
    result = _invoke("verify", tmp_path / "a.onnx", tmp_path / "a.onnx", "--inputs",
                     tmp_path / "real.npz", "--json")
    assert result.exit_code == 0, result.output
    labels = [b["label"] for b in json.loads(result.stdout)["batches"]]
    assert labels[0] == "random #1 (5x1x8x8)" and labels[-1] == "real inputs real.npz", labels


def test_verify_with_tensorrt_missing_exits_3(converted: tuple[Path, dict]) -> None:
    out, _ = converted
    result = _invoke("verify", STATE, *CONFIRM, out, "--engine", "trt")
    _assert_user_error(result, 3, "TensorRT")


def test_verify_a_built_engine_needs_tensorrt(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not checked before TensorRT is")
    result = _invoke("verify", CHECKPOINT_DIR / "digits-vit-un.pt2", plan, "--engine", "trt")
    _assert_user_error(result, 3, "TensorRT is not installed")
    result = _invoke("verify", CHECKPOINT_DIR / "digits-vit-un.pt2", plan)
    _assert_user_error(result, 2, f"{plan} is a TensorRT engine: verify it with --engine trt")


def test_no_verify_is_loud(tmp_path: Path) -> None:
    result = _invoke("convert", STATE, *CONFIRM, "--out", tmp_path / "m.onnx", "--exporter",
                     "torchscript", "--no-verify")
    assert result.exit_code == 0, result.output
    assert "warning: --no-verify: the output will NOT be checked" in result.stderr
    assert "NOT checked against torch" in result.stdout


def test_missing_model(tmp_path: Path) -> None:
    _assert_user_error(_invoke("convert", tmp_path / "none.pt", "--out", tmp_path / "m.onnx"),
                       2, f"{tmp_path / 'none.pt'}: no such file")


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty (0 bytes): not a model file"),
    (bytes(range(256)) * 4, "is not a PyTorch file (or is damaged or truncated): "),
    (b"\x80\x02garbage", "is not a PyTorch file (or is damaged or truncated): it does not "
                          "unpickle"),
], ids=["empty", "bytes", "bad_pickle"])
def test_not_a_pytorch_file(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "model.pt").write_bytes(content)
    result = _invoke("convert", tmp_path / "model.pt", "--out", tmp_path / "m.onnx")
    _assert_user_error(result, 2, f"{tmp_path / 'model.pt'} {says}")
    assert "weights_only" not in result.stderr, "torch's advice is no advice here"
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_file_given_to_convert_points_at_fold(tmp_path: Path,
                                                      converted: tuple[Path, dict]) -> None:
    onnx_file, _ = converted
    result = _invoke("convert", onnx_file, "--out", tmp_path / "m.onnx")
    _assert_user_error(result, 2, f"{onnx_file} is an ONNX model, not a PyTorch one")
    assert f"run `unfold fold {onnx_file} --out FOLDED.onnx`" in result.stderr
    assert "weights_only" not in result.stderr


def test_truncated_model(tmp_path: Path) -> None:
    data = STATE.read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 3])
    result = _invoke("convert", tmp_path / "model.pt", "--out", tmp_path / "m.onnx",
                     "--arch", "sample_models.vit:digits_vit")
    _assert_user_error(result, 2, f"{tmp_path / 'model.pt'} is not a PyTorch file")


def test_wrong_input_shape_says_what_the_model_takes(tmp_path: Path) -> None:
    result = _invoke("convert", STATE, *CONFIRM, "--out", tmp_path / "m.onnx", "--input-shape",
                     "2x3x8x8")
    _assert_user_error(result, 2, "--input-shape images:2x3x8x8 does not fit the model, which "
                                  "takes images: 2x1x8x8")


def test_wrong_input_shape_without_a_description_shows_the_models_error(
        tmp_path: Path) -> None:
    torch.save(torch.load(STATE, weights_only=True), tmp_path / "weights.pt")
    result = _invoke("convert", tmp_path / "weights.pt", "--out", tmp_path / "m.onnx",
                     "--arch", "sample_models.vit:digits_vit", "--input-shape", "2x3x8x8")
    _assert_user_error(result, 2, "the torch model fails on inputs images (2, 3, 8, 8)")


def test_unknown_arch(tmp_path: Path) -> None:
    torch.save(torch.load(STATE, weights_only=True), tmp_path / "weights.pt")
    result = _invoke("convert", tmp_path / "weights.pt", "--out", tmp_path / "m.onnx",
                     "--arch", "sample_models.vit:no_such_model")
    _assert_user_error(result, 2, "--arch 'sample_models.vit:no_such_model': sample_models.vit "
                                  "has no callable 'no_such_model'")


def test_an_arch_json_beside_the_weights_runs_nothing_without_trust(tmp_path: Path) -> None:
    made = tmp_path / "made_by_the_file"
    torch.save(torch.load(STATE, weights_only=True), tmp_path / "w.pt")
    (tmp_path / "w.arch.json").write_text(json.dumps({"arch": "os:mkdir",
                                                      "arch_kwargs": {"path": str(made)}}))
    out = tmp_path / "o.onnx"
    result = _invoke("convert", tmp_path / "w.pt", "--out", out)
    _assert_user_error(result, 2, f"{tmp_path / 'w.arch.json'} names the architecture os:mkdir: "
                                  f"building it would import os and run mkdir(")
    assert "pass --trust if you trust w.arch.json, or give --arch os:mkdir" in result.stderr
    assert not made.exists() and not out.exists()


def test_the_samples_arch_json_converts_once_confirmed(tmp_path: Path) -> None:
    result = _invoke("convert", STATE, "--out", tmp_path / "m.onnx", "--exporter",
                     "torchscript", "--trust", "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert "architecture sample_models.vit:digits_vit from digits-vit-un.arch.json (--trust)" \
        in notes, notes


def test_unwritable_output_folder(tmp_path: Path) -> None:
    target = Path("/sys/m.onnx") if os.geteuid() == 0 else tmp_path / "ro" / "m.onnx"
    if os.geteuid() != 0:
        target.parent.mkdir()
        target.parent.chmod(0o500)
    result = _invoke("convert", STATE, *CONFIRM, "--out", target)
    _assert_user_error(result, 2, f"cannot write {target}: the folder {target.parent} is not "
                                  f"writable")


def test_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    _assert_user_error(_invoke("convert", STATE, *CONFIRM, "--out", out), 2,
                       f"{out} exists; pass --force to overwrite it")
    assert out.read_bytes() == b"precious"


def test_output_equal_to_input_is_refused() -> None:
    _assert_user_error(_invoke("convert", STATE, *CONFIRM, "--out", STATE, "--force"), 2,
                       f"--out {STATE} is the input file")


def test_bad_npz_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 1, 8, 8), np.float32))
    result = _invoke("convert", STATE, *CONFIRM, "--out", tmp_path / "m.onnx", "--exporter",
                     "torchscript", "--inputs", tmp_path / "x.npz")
    _assert_user_error(result, 2, f"--inputs {tmp_path / 'x.npz'} holds ['pixels']")
    assert not (tmp_path / "m.onnx").exists()


def test_every_way_a_conversion_ends_has_its_message_and_exit_code() -> None:
    from cli.convert import ENDINGS
    from unfold.pipeline import Outcome

    assert set(ENDINGS) == {o.value for o in Outcome}
    assert [ENDINGS[o][1] for o in Outcome] == [0, 1, 1]


@pytest.mark.parametrize(("args", "message"), [
    (["--atol=-1"], "--atol '-1': expected a number >= 0"),
    (["--rtol", "1e-4", "--rtol", "logits=1e-3"], "--rtol 1e-4 logits=1e-3: give one tolerance "
                                                   "for every output, or OUTPUT=value for each"),
    (["--input-shape", "1x"], "--input-shape '1x': expected dimensions like 1x3x224x224"),
    (["--int-range", "zzz"], "--int-range 'zzz': expected LOW,HIGH"),
    (["--input-dtype", "ids:int64", "--input-dtype", "int32"],
     "--input-dtype ids:int64 int32: give one value for every input, or NAME:VALUE for each"),
    (["--dynamic", "sideways"], "--dynamic 'sideways': 'sideways' is not an axis name"),
    (["--arch-kwargs", "{dim: 32}"], "--arch-kwargs '{dim: 32}' is not JSON"),
    (["--seed", "-1"], "--seed -1: a seed is an int >= 0"),
])
@pytest.mark.parametrize("command", ["convert", "verify"])
def test_flags_are_parsed_before_the_model_is_even_looked_for(tmp_path: Path, command: str,
                                                              args: list[str],
                                                              message: str) -> None:
    """(the model does not exist: the flag's error comes first, so it cost nothing)"""
    paths = ([tmp_path / "missing.pt", "--out", tmp_path / "o.onnx"] if command == "convert"
             else [tmp_path / "missing.pt", tmp_path / "o.onnx"])
    result = _invoke(command, *paths, *args)
    _assert_user_error(result, 2, message)
    assert list(tmp_path.iterdir()) == []


def test_weights_trained_with_swap_norms_convert_with_swap(tmp_path: Path) -> None:
    """A factory that builds LayerNorm, weights trained after swap_norms: without --swap the
    error names it (exit 2, nothing written); with it the model converts, every norm folded."""
    from tests.models import randomize_norms, tiny_vit
    from unfold.nn import swap_norms

    model, _ = swap_norms(tiny_vit(norm="ln"), kind="un")
    torch.save(randomize_norms(model).state_dict(), tmp_path / "w.pt")
    flags = ["--arch", "tests.models:tiny_vit", "--arch-kwargs", '{"norm": "ln"}',
             "--input-shape", "2x1x8x8"]
    result = _invoke("convert", tmp_path / "w.pt", "--out", tmp_path / "m.onnx", *flags)
    _assert_user_error(result, 2, f"{tmp_path / 'w.pt'} does not fit --arch "
                                  f"tests.models:tiny_vit: the file holds UnifiedNorm statistics "
                                  f"on 5 module(s) the architecture builds as LayerNorm "
                                  f"(blocks.0.norm1, blocks.0.norm2, blocks.1.norm1, "
                                  f"blocks.1.norm2, norm): the model was trained with "
                                  f"unfold.nn.swap_norms; pass --swap un")
    assert not (tmp_path / "m.onnx").exists()
    result = _invoke("convert", tmp_path / "w.pt", "--out", tmp_path / "m.onnx", *flags,
                     "--swap", "un", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fold"]["folded"] == 5 and report["fold"]["no_norm_left"]
    result = _invoke("verify", tmp_path / "w.pt", tmp_path / "m.onnx", *flags, "--swap", "un")
    assert result.exit_code == 0, result.output
    result = _invoke("convert", tmp_path / "w.pt", "--out", tmp_path / "m2.onnx", *flags,
                     "--swap", "ln")
    assert result.exit_code == 2 and "'ln' is not an offline norm; valid: un, pn, pn*" in \
        result.output
