"""`unfold build`'s library side: shape ranges resolved against the ONNX model's inputs,
the weights fp16 cannot hold named before an fp16 build, the parser's errors by node, and the
build itself, its control flow exercised against a recording stand-in for TensorRT (no
TensorRT here: the stand-in builds nothing; `.ci/typecheck-trt` checks the real API's use)."""

from __future__ import annotations

import os
import stat
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli._common import cli_spelling
from cli.build import parse_shape_ranges
from unfold.engines.trt import (
    ShapeRange,
    build_engine,
    build_serialized,
    check_timing_cache_path,
    describe_parser_errors,
    resolve_profile,
)
from unfold.errors import ExitCode, UnfoldError, spelled_as
from unfold.fold import ModelParts
from unfold.inputs import InputSpec
from unfold.precision.ranges import (
    FP16_SMALLEST_NORMAL,
    MAX_WARNINGS,
    fp16_range_report,
)

N = helper.make_node


def _model(inputs: dict[str, list], initializers: Sequence[onnx.TensorProto] = (),
           listed_initializers: bool = False) -> onnx.ModelProto:
    """Identity from each input to an output, with `initializers` beside (and, as old
    exporters did, listed among the inputs with `listed_initializers`)."""
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
    if listed_initializers:
        values += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in initializers]
    graph = helper.make_graph(
        [N("Identity", [n], [f"{n}_out"], name=f"id_{n}") for n in inputs], "g", values,
        [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, s)
         for n, s in inputs.items()], list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _weight(name: str, values: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


# --- the profile ------------------------------------------------------------------------------

IMAGES = {"x": ["N", 1, 8, 8], "mask": [1, 8]}
# (most messages read here as the CLI spells them: `--shapes x:1x8/4x8/16x8`, cli_flags)

@pytest.fixture
def cli_flags() -> Iterator[None]:
    with spelled_as(cli_spelling):
        yield


def test_a_python_caller_reads_its_own_parameter() -> None:
    with pytest.raises(UnfoldError) as info:
        resolve_profile(_model(IMAGES), {})
    assert str(info.value).startswith(
        "no profile for input(s) with dynamic dims: x: Nx1x8x8; give the range of each, e.g. "
        "profile={'x': ShapeRange(min=(1, 1, 8, 8), opt=(8, 1, 8, 8), max=(32, 1, 8, 8))}")
    with pytest.raises(UnfoldError, match=r"^profile=\{'y': ShapeRange\(min=\(1, 8\), .*the "
                                          r"model has no input 'y'"):
        resolve_profile(_model(IMAGES), {"y": ShapeRange.fixed((1, 8))})
    with pytest.raises(UnfoldError, match=r"^profile=\{'x': '1x1x8x8/4x1x8x8/16x1x8x8'\}: "
                                          r"expected a ShapeRange"):
        resolve_profile(_model(IMAGES), {"x": "1x1x8x8/4x1x8x8/16x1x8x8"})  # type: ignore[dict-item]
    with pytest.raises(UnfoldError, match=r"min <= opt <= max on every axis"):
        resolve_profile(_model(IMAGES), {"x": ShapeRange((4, 1, 8, 8), (2, 1, 8, 8),
                                                         (8, 1, 8, 8))})


def test_static_inputs_need_no_shapes() -> None:
    assert resolve_profile(_model({"mask": [1, 8], "t": []}), {}) == \
        {"mask": ShapeRange.fixed((1, 8)), "t": ShapeRange.fixed(())}


def test_given_ranges_cover_the_dynamic_inputs_in_the_models_order() -> None:
    given = parse_shape_ranges(["x:1x1x8x8/4x1x8x8/16x1x8x8"])
    profile = resolve_profile(_model({"mask": [1, 8], **IMAGES}), given)
    assert list(profile) == ["mask", "x"]
    assert profile["x"] == ShapeRange((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    assert profile["mask"] == ShapeRange.fixed((1, 8))


def test_a_static_input_may_be_given_its_own_shape() -> None:
    given = parse_shape_ranges(["x:1x1x8x8/2x1x8x8/2x1x8x8", "mask:1x8"])
    assert resolve_profile(_model(IMAGES), given)["mask"] == ShapeRange.fixed((1, 8))


@pytest.mark.usefixtures("cli_flags")
def test_a_dynamic_input_without_shapes_is_named_with_its_dims() -> None:
    with pytest.raises(UnfoldError) as info:
        resolve_profile(_model(IMAGES), {})
    assert str(info.value) == (
        "no --shapes for input(s) with dynamic dims: x: Nx1x8x8; give the range of each, e.g. "
        "--shapes x:1x1x8x8/8x1x8x8/32x1x8x8 (N from 1 to 32, tuned for 8)")


@pytest.mark.usefixtures("cli_flags")
def test_an_unnamed_dynamic_dim_shows_as_a_question_mark() -> None:
    with pytest.raises(UnfoldError, match=r"dynamic dims: ids: \?x16, pos: Nxseq; .*"
                                          r"--shapes ids:1x16/8x16/32x16 "
                                          r"--shapes pos:1x1/8x8/32x32 "
                                          r"\(N, seq, each \? from 1 to 32"):
        resolve_profile(_model({"ids": [None, 16], "pos": ["N", "seq"]}), {})


@pytest.mark.usefixtures("cli_flags")
def test_an_input_without_a_shape_needs_one() -> None:
    m = _model({"x": [2]})
    m.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(UnfoldError, match=r"x: no shape in the model; .* --shapes x:MIN/OPT/MAX"):
        resolve_profile(m, {})
    assert resolve_profile(m, parse_shape_ranges(["x:3x4"])) == {"x": ShapeRange.fixed((3, 4))}


X = "x:1x1x8x8/2x1x8x8/4x1x8x8"  # a range the model takes


@pytest.mark.parametrize(("texts", "message"), [
    ([X, "y:1x8"], "--shapes y:1x8/1x8/1x8: the model has no input 'y'; its inputs: "
                   "x: Nx1x8x8, mask: 1x8"),
    (["x:1x64/2x64/4x64"], "--shapes x:1x64/2x64/4x64: 2 dims, but the model's input has 4 "
                           "(x: Nx1x8x8)"),
    (["x:1x3x8x8/2x3x8x8/4x3x8x8"], "--shapes x:1x3x8x8/2x3x8x8/4x3x8x8: axis 1 is 3/3/3, but "
                                    "it is static in the model (x: Nx1x8x8): give 1 there in "
                                    "min, opt and max"),
    (["x:1x1x8x4/1x1x8x8/1x1x8x8"], "axis 3 is 4/8/8, but it is static in the model"),
    ([X, "mask:2x8"], "--shapes mask:2x8/2x8/2x8: axis 0 is 2/2/2, but it is static in the "
                      "model (mask: 1x8)"),
], ids=["unknown_input", "rank", "static_dim", "static_dim_only_min", "static_input"])
@pytest.mark.usefixtures("cli_flags")
def test_ranges_the_model_contradicts(texts: list[str], message: str) -> None:
    with pytest.raises(UnfoldError) as info:
        resolve_profile(_model(IMAGES), parse_shape_ranges(texts))
    assert message in str(info.value), str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    m = _model({"x": [2, 4]}, [_weight("w", np.ones((4, 4)))], listed_initializers=True)
    assert [v.name for v in m.graph.input] == ["x", "w"]
    assert resolve_profile(m, {}) == {"x": ShapeRange.fixed((2, 4))}
    with pytest.raises(UnfoldError, match="the model has no input 'w'; its inputs: x: 2x4$"):
        resolve_profile(m, parse_shape_ranges(["w:4x4"]))
    parts = ModelParts.viewing(m)  # (the parts keep the weights apart: the same inputs)
    assert resolve_profile(parts, {}) == {"x": ShapeRange.fixed((2, 4))}


def test_a_declared_shape_ranges_a_dynamic_dim_from_1() -> None:
    profile = resolve_profile(_model(IMAGES), {}, declared={"x": (4, 1, 8, 8)})
    assert profile["x"] == ShapeRange((1, 1, 8, 8), (4, 1, 8, 8), (4, 1, 8, 8))
    with pytest.raises(UnfoldError, match=r"the declared shape 4x3x8x8: axis 1 is 3/3/3, but "
                                          r"it is static"):
        resolve_profile(_model(IMAGES), {}, declared={"x": (4, 3, 8, 8)})
    with pytest.raises(UnfoldError, match=r"the declared shape 4x8: 2 dims, but the model's "
                                          r"input has 4"):
        resolve_profile(_model(IMAGES), {}, declared={"x": (4, 8)})


# --- the other options -----------------------------------------------------------------------

@pytest.mark.usefixtures("cli_flags")
def test_the_timing_cache_path_is_checked_first(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    with pytest.raises(UnfoldError, match=f"--timing-cache {tmp_path} is a directory"):
        check_timing_cache_path(tmp_path)
    missing = tmp_path / "no" / "t.cache"
    with pytest.raises(UnfoldError, match=f"the folder {missing.parent} does not exist"):
        check_timing_cache_path(missing)
    with pytest.raises(UnfoldError, match=f"--timing-cache {model} is {model}, a file of the "
                                          f"build itself"):
        check_timing_cache_path(model, inputs=(model,))
    assert check_timing_cache_path(tmp_path / "t.cache", inputs=(model,)) == tmp_path / "t.cache"


# --- the parser's errors ---------------------------------------------------------------------

class _Error:
    """What TensorRT 10's ParserError answers."""

    def __init__(self, node: int, name: str, op: str, desc: str, code: str) -> None:
        self._values = node, name, op, desc, SimpleNamespace(name=code)

    def node(self) -> int:
        return self._values[0]

    def node_name(self) -> str:
        return self._values[1]

    def node_operator(self) -> str:
        return self._values[2]

    def desc(self) -> str:
        return self._values[3]

    def code(self) -> object:
        return self._values[4]


def test_parser_errors_are_listed_by_node() -> None:
    nodes = [N("Relu", ["a"], ["b"], name="act"), N("MatMul", ["b", "w"], ["c"], name="fc")]
    text = describe_parser_errors([
        _Error(1, "fc", "MatMul", "no kernel for int4", "UNSUPPORTED_NODE"),
        _Error(0, "", "", "bad attribute", "INVALID_NODE"),  # named from `nodes`
        _Error(-1, "", "", "cannot read the model", "MODEL_DESERIALIZE_FAILED"),
    ], nodes)
    assert text.splitlines() == [
        "TensorRT's ONNX parser rejects the model (3 errors):",
        "  node 1 'fc' (MatMul): UNSUPPORTED_NODE: no kernel for int4",
        "  node 0 'act' (Relu): INVALID_NODE: bad attribute",
        "  the model: MODEL_DESERIALIZE_FAILED: cannot read the model"]
    assert describe_parser_errors([_Error(5, "", "Gelu", "x", "UNSUPPORTED_NODE")]) == \
        "TensorRT's ONNX parser rejects the model (1 error):\n  node 5 (Gelu): UNSUPPORTED_NODE: x"


# --- fp16's range ----------------------------------------------------------------------------

def test_weights_fp16_cannot_hold_are_named_with_their_range() -> None:
    m = _model({"x": [2]}, [_weight("big", [1.0, 1e5, -3.0]), _weight("ok", [0.0, 1.0, -65504.0]),
                            _weight("tiny", [0.5, 0.0, -1e-7, 1e-9])])
    report = fp16_range_report(m)
    assert not report and report.checked == 3
    big, tiny = report.weights
    assert (big.name, big.max_abs, big.overflow, big.subnormal) == ("big", 1e5, 1, 0)
    assert tiny.name == "tiny" and tiny.overflow == 0 and tiny.max_abs == 0.5
    assert tiny.min_abs_nonzero == pytest.approx(1e-9) and (tiny.subnormal, tiny.to_zero) == (2, 1)
    warnings = report.warnings()
    assert warnings[0] == ("--fp16: initializer 'big' (float32 3): max |value| 1e+05 is past "
                           "fp16's largest 65504 (1 value)")
    assert warnings[1] == ("--fp16: initializer 'tiny' (float32 4): smallest non-zero |value| "
                           "1e-09 is below fp16's smallest normal 6.1e-05 (2 values subnormal "
                           "in fp16, of which 1 would be 0)")
    assert "--bf16 would hold all of them" in warnings[-1]
    assert "8 significant bits to fp16's 11" in warnings[-1]
    assert "with both, TensorRT may still run a layer" in report.warnings(bf16=True)[-1]
    assert report.to_dict()["weights"][0] == {
        "name": "big", "dtype": "float32", "shape": [3], "max_abs": 1e5, "min_abs_nonzero": 1.0,
        "overflow": 1, "subnormal": 0, "to_zero": 0, "fits_bf16": True}


def test_a_model_fp16_holds_reports_nothing() -> None:
    edges = [65504.0, -65504.0, FP16_SMALLEST_NORMAL, 0.0, 1.0]  # (the limits themselves fit)
    m = _model({"x": [2]}, [_weight("w", edges), _weight("h", [1e-7], np.float16),
                            _weight("shape", [100000, 1], np.int64)])
    report = fp16_range_report(m)
    assert report and report.weights == [] and report.warnings() == []
    assert report.checked == 1, "fp16 and integer initializers are not converted"


def test_just_past_the_limits_is_reported() -> None:
    above = float(np.nextafter(np.float32(65504), np.float32(np.inf)))
    below = float(np.nextafter(np.float32(FP16_SMALLEST_NORMAL), np.float32(0)))
    report = fp16_range_report(_model({"x": [2]}, [_weight("w", [above, below])]))
    (weight,) = report.weights
    assert (weight.overflow, weight.subnormal, weight.to_zero) == (1, 1, 0)


def test_other_float_types_and_the_folds_arrays_are_checked() -> None:
    bf16 = helper.make_tensor("b", TensorProto.BFLOAT16, [2], [1.0, 1e5])
    parts = ModelParts.viewing(_model({"x": [2]}, [bf16, _weight("d", [1e-300], np.float64)]))
    parts.weights["folded"] = np.array([2e5], np.float32)  # what a fold leaves as an array
    report = fp16_range_report(parts)
    assert [(w.name, w.dtype, w.fits_bf16) for w in report.weights] == \
        [("b", "bfloat16", True), ("d", "float64", False), ("folded", "float32", True)]
    assert "--bf16 would hold all but 'd' (outside bf16's range too)" in report.warnings()[-1]


def test_many_weights_are_summed_up() -> None:
    weights = [_weight(f"w{i}", [1e6]) for i in range(MAX_WARNINGS + 5)]
    warnings = fp16_range_report(_model({"x": [2]}, weights)).warnings()
    assert len(warnings) == MAX_WARNINGS + 2
    assert warnings[-2] == ("--fp16: and 5 more initializers outside fp16's range (--json lists "
                            "them all)")
    assert warnings[-1].startswith(f"--fp16: float initializers past fp16's largest value: "
                                   f"{MAX_WARNINGS + 5} of {MAX_WARNINGS + 5}, with values below "
                                   f"its smallest normal: 0")


# --- the build -------------------------------------------------------------------------------

def _tensorrt_installed() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


@pytest.mark.skipif(_tensorrt_installed(), reason="TensorRT is installed here")
def test_without_tensorrt_the_build_is_exit_code_3_and_writes_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "m.plan"
    onnx.save(_model({"x": [2, 4]}), src)
    with pytest.raises(UnfoldError, match="TensorRT is not installed") as info:
        build_engine(src, out, {"x": ShapeRange.fixed((2, 4))}, timing_cache=tmp_path / "t")
    assert info.value.exit_code == ExitCode.ENGINE_MISSING
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_paths_fail_before_tensorrt_is_needed(tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "m.plan"
    with pytest.raises(UnfoldError, match=f"{src}: no such file") as info:
        build_engine(src, out, {})
    assert info.value.exit_code == ExitCode.BAD_INPUT
    onnx.save(_model({"x": [2, 4]}), src)
    out.write_bytes(b"precious")
    with pytest.raises(UnfoldError, match=f"{out} exists; pass force=True to overwrite it"):
        build_engine(src, out, {})
    with pytest.raises(UnfoldError, match="^timing_cache='.*' is a directory"):
        build_engine(src, tmp_path / "new.plan", {}, timing_cache=tmp_path)
    assert out.read_bytes() == b"precious"


# The two APIs the stand-in answers as. 10.x (tensorrt-stubs 10.13): the weak-typing builder
# flags exist, and a strongly typed network needs NetworkDefinitionCreationFlag.STRONGLY_TYPED
# (= 1; 0 is the deprecated EXPLICIT_BATCH). 11.x (NVIDIA's 10.x -> 11.x migration guide,
# "Removed Python APIs and Replacements"): BuilderFlag.FP16, BF16, INT8, FP8, INT4, FP4 and
# OBEY/PREFER_PRECISION_CONSTRAINTS are gone, strong typing is the only mode and its creation
# flag is deprecated and ignored; here it is left out altogether, so any use of it fails too.
TENSORRT_VERSIONS = ["10.13.0.35", "11.4.0.8"]
_WEAK_TYPING_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                      "PREFER_PRECISION_CONSTRAINTS")


@pytest.fixture(params=TENSORRT_VERSIONS, ids=["trt10", "trt11"])
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch,
                  request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    """A stand-in for the `tensorrt` module, answering as TensorRT 10's or 11's API does and
    recording the calls unfold makes. It builds nothing: the "engine" is the bytes in
    `state.engine`. What it checks is unfold's control flow around TensorRT (what is set, read,
    written, refused), never TensorRT itself; torch is told a GPU is here. The parser records
    the element types of the initializers of the graph it is given (`state.parsed_types`)."""
    version = request.param
    state = SimpleNamespace(inputs=["x"], errors=[], engine=b"serialized engine",
                            cache_accepted=True, cache_after=b"timing cache, updated",
                            calls=[], version=version, parsed_types=set())

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name, self.is_shape_tensor = name, False

    class Network:
        num_inputs = property(lambda self: len(state.inputs))

        def get_input(self, index: int) -> Tensor:
            return Tensor(state.inputs[index])

    class Profile:
        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            state.calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

    class TimingCache:
        def serialize(self) -> bytes:
            return state.cache_after

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            state.calls.append(("memory_pool_limit", pool, size))

        def set_flag(self, flag: str) -> None:
            state.calls.append(("flag", flag))
            raise AssertionError(f"a builder flag was set: {flag}")

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            state.calls.append(("create_timing_cache", bytes(data)))
            return TimingCache()

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            state.calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return state.cache_accepted

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            state.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            state.calls.append(("build",))
            return state.engine

    class OnnxParser:
        num_errors = property(lambda self: len(state.errors))

        def __init__(self, network: Network, logger: object) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            state.calls.append(("parse", len(data)))
            state.parsed_types = {t.data_type for t in onnx.load_from_string(data)
                                  .graph.initializer}
            return not state.errors

        def parse_from_file(self, path: str) -> bool:
            state.calls.append(("parse_from_file", path))
            state.parsed_types = {t.data_type for t in onnx.load(path).graph.initializer}
            return not state.errors

        def get_error(self, index: int) -> _Error:
            return state.errors[index]

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity: str) -> None:
            pass

    module = types.ModuleType("tensorrt")
    ten = version.startswith("10.")
    module.__dict__.update(
        __version__=version, Builder=Builder, OnnxParser=OnnxParser, Logger=Logger,
        Dims=tuple, MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        BuilderFlag=SimpleNamespace(**({f: f for f in _WEAK_TYPING_FLAGS} if ten else {}),
                                    TF32="TF32"),
        NetworkDefinitionCreationFlag=SimpleNamespace(
            **({"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if ten else {})))
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    yield state


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _saved(tmp_path: Path) -> Path:
    src = tmp_path / "m.onnx"
    onnx.save(_model({"x": ["N", 8]}), src)
    return src


def _strongly_typed(state: SimpleNamespace) -> int:
    """The creation flags a strongly typed network takes on the stand-in's version."""
    return 1 << 1 if state.version.startswith("10.") else 0


def test_the_engine_is_built_for_the_profile_and_written(tmp_path: Path,
                                                         fake_tensorrt: SimpleNamespace) -> None:
    src, out = _saved(tmp_path), tmp_path / "m.plan"
    profile = resolve_profile(onnx.load(src), parse_shape_ranges(["x:1x8/4x8/16x8"]))
    report = build_engine(src, out, profile, workspace_bytes=1 << 30)
    assert out.read_bytes() == b"serialized engine"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == 0o666 & ~umask, "the mode open() gives, not mkstemp's 0600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.plan"], "no temp file"
    assert fake_tensorrt.calls == [
        ("create_network", _strongly_typed(fake_tensorrt)), ("parse_from_file", str(src)),
        ("memory_pool_limit", "WORKSPACE", 1 << 30), ("set_shape", "x", (1, 8), (4, 8), (16, 8)),
        ("build",)]
    assert report.to_dict() == {
        "engine": str(out), "engine_bytes": len(b"serialized engine"),
        "build_seconds": report.build_seconds, "tensorrt": fake_tensorrt.version,
        "strongly_typed": True, "precision": "fp32", "tensors": {"fp32": 2},
        "conversion": None, "tensor_types": {"x": "fp32", "x_out": "fp32"},
        "workspace_bytes": 1 << 30,
        "profile": {"x": {"min": [1, 8], "opt": [4, 8], "max": [16, 8]}},
        "timing_cache": None, "fp16_range": None}
    assert report.build_seconds >= 0


def _linear(tmp_path: Path, weight: float = 1.0) -> Path:
    src = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [N("MatMul", ["x", "w"], ["h"]), N("Add", ["h", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [_weight("w", np.full((8, 4), weight)), _weight("b", np.ones(4))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    return src


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_precision_is_the_graphs_own_and_no_builder_flag_is_set(
        tmp_path: Path, fake_tensorrt: SimpleNamespace, precision: str) -> None:
    src, out = _linear(tmp_path), tmp_path / "m.plan"
    report = build_engine(src, out, {"x": ShapeRange.fixed((2, 8))}, precision=precision)
    half = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.BFLOAT16
    assert fake_tensorrt.parsed_types == {half}, "TensorRT parsed the converted graph"
    assert not any(call[0] == "flag" for call in fake_tensorrt.calls)
    assert fake_tensorrt.calls[0] == ("create_network", _strongly_typed(fake_tensorrt))
    assert report.precision == precision and report.tensors == {"fp32": 2, precision: 5}
    assert report.tensor_types["w"] == report.tensor_types["h"] == precision
    assert report.tensor_types["x"] == report.tensor_types["y"] == "fp32"
    assert report.conversion is not None and report.conversion.casts == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.plan"], \
        "the converted graph's file is gone"


def test_a_weight_fp16_cannot_hold_is_refused_before_tensorrt_is_looked_for(
        tmp_path: Path) -> None:
    src, out = _linear(tmp_path, weight=1e5), tmp_path / "m.plan"
    with pytest.raises(UnfoldError, match=r"initializer 'w': its largest \|value\| 1e\+05 is "
                                          r"past fp16's largest 65504") as info:
        build_engine(src, out, {"x": ShapeRange.fixed((2, 8))}, precision="fp16")
    assert info.value.exit_code == ExitCode.BAD_INPUT and not out.exists()


def test_tensorrt_before_10_is_refused(tmp_path: Path, fake_tensorrt: SimpleNamespace) -> None:
    sys.modules["tensorrt"].__version__ = "8.6.1"
    with pytest.raises(UnfoldError, match="TensorRT 8.6.1 is too old: unfold builds with "
                                          "TensorRT 10 and 11") as info:
        build_engine(_saved(tmp_path), tmp_path / "m.plan", {"x": ShapeRange.fixed((2, 8))})
    assert info.value.exit_code == ExitCode.ENGINE_MISSING


def test_a_replaced_engine_keeps_its_mode(tmp_path: Path, fake_tensorrt: SimpleNamespace) -> None:
    src, out = _saved(tmp_path), tmp_path / "m.plan"
    out.write_bytes(b"old engine")
    out.chmod(0o640)
    build_engine(src, out, {"x": ShapeRange.fixed((2, 8))}, force=True)
    assert out.read_bytes() == b"serialized engine" and _mode(out) == 0o640
    assert not any(c[0] == "memory_pool_limit" for c in fake_tensorrt.calls), \
        "no --workspace: TensorRT's default"


def test_the_timing_cache_is_read_and_written_back(tmp_path: Path,
                                                   fake_tensorrt: SimpleNamespace) -> None:
    src, cache = _saved(tmp_path), tmp_path / "t.cache"
    profile = {"x": ShapeRange.fixed((2, 8))}
    first = build_engine(src, tmp_path / "a.plan", profile, timing_cache=cache)
    assert ("create_timing_cache", b"") in fake_tensorrt.calls, "a new cache"
    assert cache.read_bytes() == b"timing cache, updated"
    assert first.to_dict()["timing_cache"] == {"path": str(cache), "read_bytes": 0,
                                               "written_bytes": len(b"timing cache, updated")}
    fake_tensorrt.calls.clear()
    cache.write_bytes(b"timing cache, first")
    fake_tensorrt.cache_after = b"timing cache, second"
    second = build_engine(src, tmp_path / "b.plan", profile, timing_cache=cache)
    assert fake_tensorrt.calls[-3:] == [("create_timing_cache", b"timing cache, first"),
                                        ("set_timing_cache", False), ("build",)]
    assert cache.read_bytes() == b"timing cache, second"
    assert second.timing_cache_read_bytes == len(b"timing cache, first")


def test_a_timing_cache_of_another_gpu_is_refused(tmp_path: Path,
                                                  fake_tensorrt: SimpleNamespace) -> None:
    src, cache, out = _saved(tmp_path), tmp_path / "t.cache", tmp_path / "m.plan"
    cache.write_bytes(b"from elsewhere")
    fake_tensorrt.cache_accepted = False
    with pytest.raises(UnfoldError, match="made by another TensorRT version or on another "
                                          "GPU") as info:
        build_engine(src, out, {"x": ShapeRange.fixed((2, 8))}, timing_cache=cache)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert ("build",) not in fake_tensorrt.calls
    assert not out.exists() and cache.read_bytes() == b"from elsewhere"


def test_parser_errors_fail_the_build_by_node(tmp_path: Path,
                                              fake_tensorrt: SimpleNamespace) -> None:
    src, out = _saved(tmp_path), tmp_path / "m.plan"
    fake_tensorrt.errors = [_Error(0, "id_x", "Identity", "unsupported", "UNSUPPORTED_NODE")]
    with pytest.raises(UnfoldError) as info:
        build_engine(src, out, {"x": ShapeRange.fixed((2, 8))})
    assert info.value.exit_code == ExitCode.CHECK_FAILED
    assert str(info.value).endswith("node 0 'id_x' (Identity): UNSUPPORTED_NODE: unsupported")
    assert not out.exists()


def test_a_failed_build_writes_nothing(tmp_path: Path, fake_tensorrt: SimpleNamespace) -> None:
    src, out, cache = _saved(tmp_path), tmp_path / "m.plan", tmp_path / "t.cache"
    fake_tensorrt.engine = None
    with pytest.raises(UnfoldError, match="TensorRT failed to build an engine") as info:
        build_engine(src, out, {"x": ShapeRange.fixed((2, 8))}, timing_cache=cache)
    assert info.value.exit_code == ExitCode.CHECK_FAILED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_input_the_profile_misses_is_named(tmp_path: Path,
                                              fake_tensorrt: SimpleNamespace) -> None:
    fake_tensorrt.inputs = ["x", "mask"]
    with pytest.raises(UnfoldError, match="no shape for the engine input mask"):
        build_engine(_saved(tmp_path), tmp_path / "m.plan", {"x": ShapeRange.fixed((2, 8))})


def test_verification_engines_keep_their_profile(fake_tensorrt: SimpleNamespace) -> None:
    """build_serialized (TrtRunner, verify): batch 1 to the declared + 3, from the proto."""
    spec = InputSpec("x", (4, 8), dynamic={0: "batch"})
    assert build_serialized(_model({"x": ["N", 8]}), [spec], fp16=True) == b"serialized engine"
    assert fake_tensorrt.calls[0] == ("create_network", _strongly_typed(fake_tensorrt))
    assert fake_tensorrt.calls[1][0] == "parse"
    assert fake_tensorrt.parsed_types == set(), "(the graph has no weights)"
    assert fake_tensorrt.calls[2:] == [("memory_pool_limit", "WORKSPACE", 4 << 30),
                                       ("set_shape", "x", (1, 8), (4, 8), (7, 8)), ("build",)]
