"""`unfold build`: every bad option or input is `error: ...` with exit 2 before TensorRT is
looked for (so here, without TensorRT, too), a missing TensorRT is exit 3 with what to install
and no file, fp16's range warnings come before the build, and a build (against the recording
stand-in for TensorRT of tests/engines/test_build.py) writes the engine and says where."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from cli.app import app
from cli.build import parse_shape_ranges, workspace_bytes_for
from tests.engines import test_build as engine_tests
from unfold.engines.trt import ShapeRange
from unfold.errors import ExitCode, UnfoldError

fake_tensorrt = engine_tests.fake_tensorrt  # (the fixture, for this module too)
runner = CliRunner()
N = helper.make_node


def _write(tmp_path: Path, weights: dict[str, list[float]] | None = None) -> Path:
    """y = x @ W (+ each further weight), x: N x 2, every weight 2x2 with the values given
    (by default one W that fp16 holds)."""
    weights = weights or {"W": [0.5, -1.0, 2.0, 0.25]}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32).reshape(2, 2), name)
             for name, v in weights.items()]
    nodes = [N("MatMul", ["x", inits[0].name], ["y0"], name="fc")]
    for i, extra in enumerate(inits[1:], start=1):
        nodes.append(N("Add", [f"y{i - 1}", extra.name], [f"y{i}"], name=f"add_{extra.name}"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, ["N", 2])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    path = tmp_path / "model.onnx"
    onnx.save(m, path)
    return path


SHAPES = ["--shapes", "x:1x2/4x2/16x2"]


def _invoke(*args: object):
    return runner.invoke(app, ["build", *(str(a) for a in args)])


def _assert_user_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert f"error: {text}" in result.stderr, result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert result.stderr.splitlines()[-1].startswith("FAILED | "), result.stderr


@pytest.mark.skipif(engine_tests._tensorrt_installed(), reason="TensorRT is installed here")
def test_without_tensorrt_exit_3_says_what_to_install_and_writes_nothing(tmp_path: Path) -> None:
    src, out = _write(tmp_path), tmp_path / "m.plan"
    result = _invoke(src, "--out", out, *SHAPES, "--timing-cache", tmp_path / "t.cache")
    _assert_user_error(result, 3, "TensorRT is not installed: `pip install -e \".[trt]\"` in "
                                  "this checkout (the `tensorrt` wheels are on PyPI, 10.x and "
                                  "11.x; unfold builds with either), on a Linux or Windows "
                                  "machine with an NVIDIA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.skipif(engine_tests._tensorrt_installed(), reason="TensorRT is installed here")
def test_fp16_warnings_come_before_tensorrt_is_needed(tmp_path: Path) -> None:
    src = _write(tmp_path, {"W": [1.0, 1.0, 2.0, 3.0], "b": [1e-7, 0.5, 0.5, 0.5]})
    result = _invoke(src, "--out", tmp_path / "m.plan", *SHAPES, "--fp16")
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == ("warning: --fp16: initializer 'b' (float32 2x2): smallest non-zero "
                        "|value| 1e-07 is below fp16's smallest normal 6.1e-05 (1 value "
                        "subnormal in fp16)")
    assert "--bf16 would hold all of them" in lines[1]
    assert lines[2].startswith("error: TensorRT is not installed")


def test_a_weight_past_fp16s_range_is_refused_by_name_before_tensorrt(tmp_path: Path) -> None:
    src, out = _write(tmp_path, {"W": [1e5, 1.0, 2.0, 3.0]}), tmp_path / "m.plan"
    result = _invoke(src, "--out", out, *SHAPES, "--fp16")
    _assert_user_error(result, 2, "initializer 'W': its largest |value| 1e+05 is past fp16's "
                                  "largest 65504: fold with --max-scale")
    assert not out.exists()


def test_fp16_and_bf16_together_are_refused(tmp_path: Path) -> None:
    result = _invoke(_write(tmp_path), "--out", tmp_path / "m.plan", *SHAPES, "--fp16", "--bf16")
    _assert_user_error(result, 2, "--fp16 and --bf16: give one")


def test_a_build_writes_the_engine_and_says_where(tmp_path: Path,
                                                  fake_tensorrt: SimpleNamespace) -> None:
    src, out = _write(tmp_path), tmp_path / "m.plan"
    result = _invoke(src, "--out", out, *SHAPES, "--workspace", "2")
    assert result.exit_code == 0, result.output + result.stderr
    assert out.read_bytes() == b"serialized engine"
    assert "warning" not in result.stderr
    assert f"wrote {out}" in result.stderr and "PASSED | " in result.stderr
    assert "optimization profile" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if "│ x " in line]
    assert [c.strip() for c in row.split("│")[1:-1]] == ["x", "1x2", "4x2", "16x2"]
    assert f"engine {out}: 0.0 MiB, built in" in result.stdout
    assert f"by TensorRT {fake_tensorrt.version}, strongly typed (fp32; float tensors: 3 fp32)" \
        in result.stdout
    assert ("memory_pool_limit", "WORKSPACE", 2 << 30) in fake_tensorrt.calls


def test_json_reports_the_build_and_fp16s_range(tmp_path: Path,
                                                fake_tensorrt: SimpleNamespace) -> None:
    src, out = _write(tmp_path, {"W": [1e-7, 1.0, 2.0, 3.0]}), tmp_path / "m.plan"
    cache = tmp_path / "t.cache"
    result = _invoke(src, "--out", out, *SHAPES, "--fp16", "--json", "--timing-cache", cache)
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["tensorrt"] == fake_tensorrt.version and report["strongly_typed"] is True
    assert report["precision"] == "fp16" and report["tensors"]["fp16"] > 0
    assert report["conversion"]["precision"] == "fp16" and report["conversion"]["casts"] >= 2
    assert report["profile"] == {"x": {"min": [1, 2], "opt": [4, 2], "max": [16, 2]}}
    assert report["timing_cache"] == {"path": str(cache), "read_bytes": 0,
                                      "written_bytes": len(b"timing cache, updated")}
    assert [w["name"] for w in report["fp16_range"]["weights"]] == ["W"]
    assert report["fp16_range"]["weights"][0]["min_abs_nonzero"] == pytest.approx(1e-7)
    assert cache.read_bytes() == b"timing cache, updated"
    assert not any(call[0] == "flag" for call in fake_tensorrt.calls)


def test_a_static_model_needs_no_shapes(tmp_path: Path, fake_tensorrt: SimpleNamespace) -> None:
    src = _write(tmp_path)
    m = onnx.load(src)
    for value in (*m.graph.input, *m.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(m, src)
    assert _invoke(src, "--out", tmp_path / "m.plan").exit_code == 0
    assert ("set_shape", "x", (3, 2), (3, 2), (3, 2)) in fake_tensorrt.calls


@pytest.mark.parametrize(("args", "message"), [
    (["--shapes", "1x2/4x2/16x2"], "--shapes '1x2/4x2/16x2': no input name; expected "
                                   "NAME:MIN/OPT/MAX"),
    (["--shapes", "x:1x2/4x2"], "--shapes 'x:1x2/4x2': 2 shapes; expected three"),
    (["--shapes", "x:8x2/4x2/16x2"], "--shapes 'x:8x2/4x2/16x2': axis 0 is 8/4/16 (min > opt)"),
    (["--shapes", "x:1x2/4x2/16x2", "--shapes", "x:1x2"], "--shapes 'x:1x2': x was given "
                                                          "already"),
    ([*SHAPES, "--workspace", "0"], "--workspace 0: must be a number of GiB, 0.001 (1 MiB) or "
                                    "more"),
    ([*SHAPES, "--workspace", "-2"], "--workspace -2: must be a number of GiB"),
    ([], "no --shapes for input(s) with dynamic dims: x: Nx2; give the range of each, e.g. "
         "--shapes x:1x2/8x2/32x2"),
    (["--shapes", "y:1x2"], "--shapes y:1x2/1x2/1x2: the model has no input 'y'; its inputs: "
                            "x: Nx2"),
    (["--shapes", "x:1x2x1/4x2x1/16x2x1"], "--shapes x:1x2x1/4x2x1/16x2x1: 3 dims, but the "
                                           "model's input has 2 (x: Nx2)"),
    (["--shapes", "x:1x3/4x3/16x3"], "--shapes x:1x3/4x3/16x3: axis 1 is 3/3/3, but it is "
                                     "static in the model (x: Nx2): give 2 there"),
], ids=["no_name", "two_shapes", "min_above_opt", "twice", "workspace_0", "workspace_negative",
        "dynamic_without_shapes", "unknown_input", "rank", "static_dim"])
def test_bad_options_are_exit_2_before_tensorrt_is_needed(tmp_path: Path, args: list[str],
                                                          message: str) -> None:
    out = tmp_path / "m.plan"
    _assert_user_error(_invoke(_write(tmp_path), "--out", out, *args), 2, message)
    assert not out.exists()


def test_options_are_checked_before_the_model_is_read(tmp_path: Path) -> None:
    _assert_user_error(_invoke(tmp_path / "nope.onnx", "--out", tmp_path / "m.plan",
                               "--shapes", "x:1/2"), 2, "--shapes 'x:1/2': 2 shapes")


def test_a_missing_model(tmp_path: Path) -> None:
    _assert_user_error(_invoke(tmp_path / "nope.onnx", "--out", tmp_path / "m.plan", *SHAPES),
                       2, f"{tmp_path / 'nope.onnx'}: no such file")


def test_not_an_onnx_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xff")
    result = _invoke(bad, "--out", tmp_path / "m.plan", *SHAPES)
    _assert_user_error(result, 2, f"{bad}")


def test_an_existing_engine_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "m.plan"
    out.write_bytes(b"precious")
    _assert_user_error(_invoke(_write(tmp_path), "--out", out, *SHAPES), 2,
                       f"{out} exists; pass --force to overwrite it")
    assert out.read_bytes() == b"precious"


def test_force_overwrites(tmp_path: Path, fake_tensorrt: SimpleNamespace) -> None:
    out = tmp_path / "m.plan"
    out.write_bytes(b"precious")
    assert _invoke(_write(tmp_path), "--out", out, *SHAPES, "--force").exit_code == 0
    assert out.read_bytes() == b"serialized engine"


@pytest.mark.parametrize("where", ["model", "directory", "missing_folder"])
def test_a_bad_timing_cache_path(tmp_path: Path, where: str) -> None:
    src = _write(tmp_path)
    cache = {"model": src, "directory": tmp_path, "missing_folder": tmp_path / "no" / "t"}[where]
    message = {"model": f"--timing-cache {src} is {src}, a file of the build itself",
               "directory": f"--timing-cache {tmp_path} is a directory",
               "missing_folder": f"--timing-cache {cache}: the folder {tmp_path / 'no'} does "
                                 f"not exist"}[where]
    _assert_user_error(_invoke(src, "--out", tmp_path / "m.plan", *SHAPES, "--timing-cache",
                               cache), 2, message)


def test_the_output_is_not_the_model(tmp_path: Path) -> None:
    src = _write(tmp_path)
    _assert_user_error(_invoke(src, "--out", src, *SHAPES, "--force"), 2,
                       f"--out {src} is the input file")


def test_help_shows_the_options() -> None:
    text = runner.invoke(app, ["build", "--help"]).stdout
    for option in ("--out", "--fp16", "--bf16", "--shapes NAME:MIN/OPT/MAX", "--workspace GiB",
                   "--timing-cache FILE", "--force", "--json", "--debug"):
        assert option in text, option


_IMPORTED = """
import atexit, sys
atexit.register(lambda: print("IMPORTED", *sorted(m for m in ("torch", "onnx", "tensorrt")
                                                   if m in sys.modules), file=sys.stderr))
from cli.main import run
sys.argv = ["unfold", *sys.argv[1:]]
run()
"""


def _imported(*args: str) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", _IMPORTED, *args], capture_output=True,
                          text=True, cwd=Path(__file__).parents[2])
    line = next(x for x in done.stderr.splitlines() if x.startswith("IMPORTED"))
    return done.returncode, set(line.split()[1:])


def test_help_imports_neither_torch_nor_onnx() -> None:
    assert _imported("build", "--help") == (0, set())


def test_a_bad_option_imports_no_torch(tmp_path: Path) -> None:
    code, modules = _imported("build", str(_write(tmp_path)), "--out", str(tmp_path / "m.plan"),
                              "--workspace", "0")
    assert code == 2 and "torch" not in modules


# --- --shapes and --workspace, parsed before any work ----------------------------------------

def test_a_range_per_input() -> None:
    ranges = parse_shape_ranges(["x:1x3x224x224/8x3x224x224/32x3x224x224", "ids:1x128"])
    assert ranges == {"x": ShapeRange((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)),
                      "ids": ShapeRange((1, 128), (1, 128), (1, 128))}
    assert ranges["x"].describe() == "1x3x224x224/8x3x224x224/32x3x224x224"


def test_an_input_name_may_hold_a_colon() -> None:
    assert parse_shape_ranges(["input:0:1x2/2x2/4x2"]) == \
        {"input:0": ShapeRange((1, 2), (2, 2), (4, 2))}


def test_equal_min_opt_max_is_a_range() -> None:
    assert parse_shape_ranges(["x:2x8/2x8/2x8"])["x"] == ShapeRange.fixed((2, 8))


@pytest.mark.parametrize(("texts", "message"), [
    (["1x3x224x224"], "--shapes '1x3x224x224': no input name; expected NAME:MIN/OPT/MAX"),
    ([":1x3"], "--shapes ':1x3': no input name"),
    (["x:1x3/2x3"], "--shapes 'x:1x3/2x3': 2 shapes; expected three (MIN/OPT/MAX) or one"),
    (["x:1x3/2x3/4x3/8x3"], "--shapes 'x:1x3/2x3/4x3/8x3': 4 shapes"),
    (["x:"], "--shapes 'x:': shape '' is not a shape; expected positive integers joined by 'x'"),
    (["x:1xax3"], "--shapes 'x:1xax3': shape '1xax3' is not a shape"),
    (["x:1x0x3"], "--shapes 'x:1x0x3': shape '1x0x3' is not a shape"),
    (["x:-1x3"], "--shapes 'x:-1x3': shape '-1x3' is not a shape"),
    (["x:1x3/2,3/4x3"], "--shapes 'x:1x3/2,3/4x3': opt '2,3' is not a shape"),
    (["x:1x3/2x3/4x3 "], "--shapes 'x:1x3/2x3/4x3 ': max '4x3 ' is not a shape"),
    (["x:1x3/2x3x1/4x3"], "--shapes 'x:1x3/2x3x1/4x3': min, opt and max have 2, 3 and 2 dims"),
    (["x:4x3/2x3/8x3"], "--shapes 'x:4x3/2x3/8x3': axis 0 is 4/2/8 (min > opt); need min <= "
                        "opt <= max on every axis"),
    (["x:1x3/8x3/4x3"], "--shapes 'x:1x3/8x3/4x3': axis 0 is 1/8/4 (opt > max)"),
    (["x:1x3/1x4/1x2"], "axis 1 is 3/4/2 (opt > max)"),
    (["x:1x3", "x:2x3"], "--shapes 'x:2x3': x was given already (x:1x3/1x3/1x3); give one range "
                         "per input"),
], ids=["no_name", "empty_name", "two_shapes", "four_shapes", "empty_shape", "letter", "zero",
        "negative", "comma", "trailing_space", "rank_differs", "min_above_opt", "opt_above_max",
        "second_axis", "twice"])
def test_bad_shapes_say_what_was_given_and_what_is_valid(texts: list[str], message: str) -> None:
    with pytest.raises(UnfoldError) as info:
        parse_shape_ranges(texts)
    assert message in str(info.value), str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT


# --- the profile against the model --------------------------------------------------------


def test_workspace_in_gib() -> None:
    assert workspace_bytes_for(None) is None
    assert workspace_bytes_for(4) == 4 << 30
    assert workspace_bytes_for(0.5) == 1 << 29


@pytest.mark.parametrize("gib", [0.0, -1.0, 1e-12, float("nan"), float("inf")])
def test_workspace_must_be_positive(gib: float) -> None:
    with pytest.raises(UnfoldError, match=rf"--workspace {gib:g}: must be a number of "
                                          r"GiB"):
        workspace_bytes_for(gib)


def test_the_engine_never_goes_over_a_file_the_model_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import unfold.onnx_files as onnx_files

    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 8)
    monkeypatch.setattr(onnx_files, "EXTERNAL_MIN_BYTES", 8)
    src = tmp_path / "big.onnx"
    onnx_files.save_onnx_atomic(onnx.load(_write(tmp_path)), src)
    data = tmp_path / "big.onnx.data"
    before = data.read_bytes()
    _assert_user_error(_invoke(src, "--out", data, "--force", *SHAPES), 2,
                       f"--out {data}: {data} is a file the input reads")
    assert data.read_bytes() == before
