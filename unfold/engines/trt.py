"""TensorRT 10 and 11: an ONNX model built into an engine, in memory (`build_serialized`, for
verification: one optimization profile that covers the verification shapes, batch 1 up to the
declared batch + 3) or into a file (`build_engine`, for `unfold build`: the profile from
`--shapes`, a precision, a workspace limit, a timing cache); and a serialized engine run with
device buffers from torch.cuda (`TrtRunner`).

Every network is strongly typed: each tensor has the type the ONNX graph gives it, and no
builder flag lets TensorRT pick another. TensorRT 11 has no other mode (its weak-typing flags,
FP16, BF16, INT8 and the precision constraints, are gone; the STRONGLY_TYPED creation flag is
deprecated and ignored), and on 10.x the flag is set. fp16 / bf16 is therefore the graph's own
(`unfold.precision.half`: the graph converted before it is parsed, or a file `unfold fold
--precision` wrote), and INT8 is explicit Q/DQ in the graph (`unfold quantize`).

What needs no TensorRT is here too and runs anywhere, so that bad input fails before TensorRT is
even looked for: the profile's shape ranges checked against the ONNX model's inputs
(`resolve_profile`; cli/build.py parses `--shapes` into them), the ONNX parser's errors described
node by node (`describe_parser_errors`), the workspace and timing-cache options checked.

TensorRT is loaded only when asked for: without the `tensorrt` package, or without a CUDA GPU,
every entry point that builds or runs raises an UnfoldError with exit code 3.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx

from unfold.errors import ExitCode, UnfoldError, option
from unfold.inputs import InputSpec
from unfold.onnx_files import (
    check_output_path,
    load_onnx_parts,
    staged_onnx,
    write_bytes_atomic,
)
from unfold.precision.half import HalfReport, check_precision, tensor_precisions, to_half

if TYPE_CHECKING:
    import tensorrt as trt

    from unfold.model_parts import ModelParts
    from unfold.precision.ranges import Fp16RangeReport


def require_tensorrt() -> None:
    """Exit code 3 with what to do, unless TensorRT and a CUDA GPU are both here."""
    try:
        import tensorrt

        if not hasattr(tensorrt, "Builder"):  # e.g. only tensorrt-stubs: a bare namespace
            raise ImportError("no TensorRT library")
    except ImportError:
        raise UnfoldError("TensorRT is not installed: `pip install -e \".[trt]\"` in this "
                          "checkout (the `tensorrt` wheels are on PyPI, 10.x and 11.x; unfold "
                          "builds with either), on a Linux or Windows machine with an NVIDIA GPU "
                          "and its CUDA driver (bf16 needs compute capability 8.0, Ampere, or "
                          "newer; TensorRT's support matrix lists each release's GPUs)",
                          ExitCode.ENGINE_MISSING) from None
    import torch

    if not torch.cuda.is_available():
        raise UnfoldError("TensorRT needs an NVIDIA GPU with its CUDA driver, and torch sees "
                          "none here", ExitCode.ENGINE_MISSING)


def tensorrt_major(trt: Any) -> int:
    """TensorRT's major version (10, 11, ...), from `tensorrt.__version__`."""
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise UnfoldError(f"TensorRT reports the version {trt.__version__!r}; unfold builds "
                          f"with TensorRT 10 and 11", ExitCode.ENGINE_MISSING) from None


def network_flags(trt: Any) -> int:
    """The creation flags of a strongly typed network: STRONGLY_TYPED on 10.x; nothing on
    11.x and later, where it is the only mode and the flag is deprecated."""
    major = tensorrt_major(trt)
    if major < 10:
        raise UnfoldError(f"TensorRT {trt.__version__} is too old: unfold builds with TensorRT "
                          f"10 and 11 (`pip install -e \".[trt]\"`)", ExitCode.ENGINE_MISSING)
    if major == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def profile_shapes(spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) for one input: dynamic axes from 1 (batch: up to declared + 3)."""
    low = tuple(1 if i in spec.dynamic else d for i, d in enumerate(spec.shape))
    high = tuple(d + 3 if i == 0 and i in spec.dynamic else d for i, d in enumerate(spec.shape))
    return low, spec.shape, high


@dataclass(frozen=True)
class ShapeRange:
    """One input's shapes in an optimization profile: min <= opt <= max on every axis. The
    engine runs any shape from `min` to `max`; TensorRT picks its kernels for `opt`."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @classmethod
    def fixed(cls, shape: Sequence[int]) -> ShapeRange:
        return cls(tuple(shape), tuple(shape), tuple(shape))

    def describe(self) -> str:
        """`1x3x224x224/8x3x224x224/32x3x224x224` (the form `unfold build --shapes` takes)."""
        return "/".join(_dims_text(shape) for shape in (self.min, self.opt, self.max))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _dims_text(dims: Sequence[int | str]) -> str:
    return "x".join(map(str, dims))


# an ONNX input's dims: a static size, or a dynamic dimension's name ('?' where it has none)
OnnxDims = list[int | str]


def onnx_inputs(model: onnx.ModelProto | ModelParts) -> dict[str, OnnxDims | None]:
    """Each input of `model` (a ModelProto or `unfold.onnx_files` parts; initializers that old
    exporters list as inputs too are left out) -> its dims, None where the model gives no
    shape at all."""
    if isinstance(model, onnx.ModelProto):
        graph, weights = model.graph, {t.name for t in model.graph.initializer}
    else:
        graph, weights = model.skeleton.graph, set(model.weights)
    inputs: dict[str, OnnxDims | None] = {}
    for value in graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            inputs[value.name] = None
            continue
        inputs[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                              else (d.dim_param or "?") for d in tensor.shape.dim]
    return inputs


def describe_input(name: str, dims: OnnxDims | None) -> str:
    """`x: Nx1x8x8`, `t: scalar`, `m: no shape in the model`."""
    if dims is None:
        return f"{name}: no shape in the model"
    return f"{name}: {_dims_text(dims) or 'scalar'}"


def check_profile(given: Any) -> None:
    """A mapping of input name -> ShapeRange, each of one rank with min <= opt <= max."""
    if not isinstance(given, Mapping):
        raise UnfoldError(f"{option('profile', given)}: expected a mapping of input name -> "
                          f"ShapeRange(min, opt, max)")
    for name, shape_range in given.items():
        if not isinstance(name, str) or not isinstance(shape_range, ShapeRange):
            raise UnfoldError(f"{option('profile', {name: shape_range})}: expected a "
                              f"ShapeRange(min, opt, max) per input name")
        ranks = {len(shape_range.min), len(shape_range.opt), len(shape_range.max)}
        if len(ranks) != 1 or not all(a <= b <= c for a, b, c in zip(
                shape_range.min, shape_range.opt, shape_range.max, strict=False)):
            raise UnfoldError(f"{option('profile', {name: shape_range})}: min, opt and max "
                              f"need one rank and min <= opt <= max on every axis")


def resolve_profile(model: onnx.ModelProto | ModelParts, given: Mapping[str, ShapeRange], *,
                    declared: Mapping[str, Sequence[int]] | None = None
                    ) -> dict[str, ShapeRange]:
    """One optimization profile for every input of `model`, in its input order: the ranges
    `given` (by input name), each checked against the model (an input it has, its rank,
    its static dims); an input not given takes its static dims, and where it has dynamic ones
    and a `declared` shape (e.g. what verification runs), 1 to that (opt = max = declared). An
    input with a dynamic dim and neither is an error that names it and its dims."""
    check_profile(given)
    inputs = onnx_inputs(model)
    for name, shape_range in given.items():
        if name not in inputs:
            takes = ", ".join(describe_input(n, d) for n, d in inputs.items()) or "none"
            raise UnfoldError(f"{option('profile', {name: shape_range})}: the model has no "
                              f"input {name!r}; its inputs: {takes}")
    profile: dict[str, ShapeRange] = {}
    missing = []
    for name, dims in inputs.items():
        if name in given:
            profile[name] = _checked(name, dims, given[name],
                                     option("profile", {name: given[name]}))
        elif dims is not None and all(isinstance(d, int) for d in dims):
            profile[name] = ShapeRange.fixed([int(d) for d in dims])
        elif dims is not None and declared and name in declared:
            shape = tuple(declared[name])
            low = tuple(1 if isinstance(d, str) else size
                        for d, size in zip(dims, shape, strict=False))
            profile[name] = _checked(name, dims, ShapeRange(low, shape, shape),
                                     f"the declared shape {_dims_text(shape)}")
        else:
            missing.append(name)
    if missing:
        raise UnfoldError(_no_range_message({n: inputs[n] for n in missing}))
    return profile


def _checked(name: str, dims: OnnxDims | None, shape_range: ShapeRange,
             source: str) -> ShapeRange:
    """`shape_range` for the input `name`, unless its rank or a static dim disagrees with the
    model's `dims`."""
    if dims is None:
        return shape_range
    model_takes = describe_input(name, dims)
    if any(len(shape) != len(dims) for shape in (shape_range.min, shape_range.opt,
                                                 shape_range.max)):
        raise UnfoldError(f"{source}: {len(shape_range.opt)} dims, but the model's input has "
                          f"{len(dims)} ({model_takes})")
    for axis, size in enumerate(dims):
        sizes = (shape_range.min[axis], shape_range.opt[axis], shape_range.max[axis])
        if isinstance(size, int) and sizes != (size, size, size):
            raise UnfoldError(f"{source}: axis {axis} is {'/'.join(map(str, sizes))}, but it is "
                              f"static in the model ({model_takes}): give {size} there in min, "
                              f"opt and max")
    return shape_range


def _no_range_message(missing: Mapping[str, OnnxDims | None]) -> str:
    """What to give for inputs with dynamic dims, in the model's own names and dims."""
    takes = ", ".join(describe_input(n, d) for n, d in missing.items())
    examples = []
    varying: list[str] = []
    for name, dims in missing.items():
        if dims is None:
            examples.append(option("profile", {name: "MIN/OPT/MAX"}))
            continue
        varying += [d for d in dims if isinstance(d, str) and d not in varying]
        low, opt, high = (tuple(d if isinstance(d, int) else size for d in dims)
                          for size in (1, 8, 32))
        examples.append(option("profile", {name: ShapeRange(low, opt, high)}))
    labels = [d for d in varying if d != "?"] + (["each ?"] if "?" in varying else [])
    sizes = f" ({', '.join(labels)} from 1 to 32, tuned for 8)" if labels else ""
    return (f"no {option('profile')} for input(s) with dynamic dims: {takes}; give the range "
            f"of each, e.g. {' '.join(examples)}{sizes}")


def check_timing_cache_path(path: str | Path, *, inputs: tuple[Path, ...] = ()) -> Path:
    """`--timing-cache FILE` is read when it exists and written back after the build: refuse
    a directory, a missing folder, or one of the command's other files (`inputs`). Called
    before any work, like `check_output_path`."""
    path = Path(path)
    for other in inputs:
        if path.resolve() == Path(other).resolve():
            raise UnfoldError(f"{option('timing_cache', str(path))} is {other}, a file of the "
                              f"build itself; give a file of its own (e.g. "
                              f"{path.with_suffix('.cache').name})")
    if path.is_dir():
        raise UnfoldError(f"{option('timing_cache', str(path))} is a directory; give a file "
                          f"name")
    folder = path.parent
    if not folder.is_dir():
        raise UnfoldError(f"{option('timing_cache', str(path))}: the folder {folder} does not "
                          f"exist")
    return path


class ParserErrorLike(Protocol):
    """What TensorRT's `ParserError` (10.x, 11.x) says of one error (`OnnxParser.get_error`)."""

    def code(self) -> object: ...

    def desc(self) -> str: ...

    def node(self) -> int: ...

    def node_name(self) -> str: ...

    def node_operator(self) -> str: ...


def describe_parser_errors(errors: Sequence[ParserErrorLike],
                           nodes: Sequence[onnx.NodeProto] = ()) -> str:
    """The ONNX parser's errors, one line each, by node: `node 3 'fc' (MatMul):
    UNSUPPORTED_NODE: ...`. `nodes` (the model's, where it is at hand) names a node that the
    parser gives by index only."""
    lines = []
    for error in errors:
        code = error.code()
        index, name, op = error.node(), error.node_name(), error.node_operator()
        if 0 <= index < len(nodes):
            name, op = name or nodes[index].name, op or nodes[index].op_type
        if index >= 0:
            where = f"node {index}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        else:
            where = "the model"  # an error of no one node (a bad graph, a failed read)
        lines.append(f"{where}: {getattr(code, 'name', None) or code}: {error.desc()}")
    count = f"{len(lines)} error{'s' if len(lines) != 1 else ''}"
    return "\n  ".join([f"TensorRT's ONNX parser rejects the model ({count}):", *lines])


def _parse_onnx(logger: trt.ILogger, builder: trt.Builder, model: onnx.ModelProto | Path
                ) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """The strongly typed network TensorRT's ONNX parser makes of `model` (a file: external
    data read from beside it), and the parser: it holds the weights the network points to and
    must live until the engine is built."""
    import tensorrt as trt

    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if isinstance(model, Path):
        parsed = parser.parse_from_file(str(model))
        nodes: Sequence[onnx.NodeProto] = ()
    else:
        parsed = parser.parse(model.SerializeToString())
        nodes = model.graph.node
    if not parsed:
        errors: list[trt.ParserError] = [parser.get_error(i) for i in range(parser.num_errors)]
        raise UnfoldError(describe_parser_errors(errors, nodes), ExitCode.CHECK_FAILED)
    return network, parser


def _builder_config(builder: trt.Builder, *, workspace_bytes: int | None
                    ) -> trt.IBuilderConfig:
    """The build's configuration: a workspace limit at most. No precision flag: the network
    is strongly typed, its types the graph's."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    return config


def _add_profile(builder: trt.Builder, network: trt.INetworkDefinition,
                 config: trt.IBuilderConfig, profile: Mapping[str, ShapeRange]) -> None:
    """One optimization profile: a range for every input of the network."""
    import tensorrt as trt

    optimization = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            raise UnfoldError(f"input {tensor.name} is a shape tensor (its values are a "
                              f"shape); unfold builds profiles for data inputs only")
        if tensor.name not in profile:
            raise UnfoldError(f"no shape for the engine input {tensor.name}")
        shapes = profile[tensor.name]
        try:
            optimization.set_shape(tensor.name, trt.Dims(list(shapes.min)),
                                   trt.Dims(list(shapes.opt)), trt.Dims(list(shapes.max)))
        except ValueError as exc:
            raise UnfoldError(f"TensorRT refuses the shapes {tensor.name}:{shapes.describe()}: "
                              f"{exc}") from None
    if config.add_optimization_profile(optimization) < 0:
        shown = ", ".join(f"{n}:{r.describe()}" for n, r in profile.items())
        raise UnfoldError(f"TensorRT refuses the optimization profile {shown}")


def _serialize(builder: trt.Builder, network: trt.INetworkDefinition,
               config: trt.IBuilderConfig) -> trt.IHostMemory:
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnfoldError("TensorRT failed to build an engine (see its log above)",
                          ExitCode.CHECK_FAILED)
    return serialized


def build_serialized(model: onnx.ModelProto, specs: Sequence[InputSpec], *,
                     fp16: bool = False, workspace_bytes: int = 4 << 30) -> bytes:
    """An engine for `model`, in memory, its one profile covering the shapes verification runs
    (`profile_shapes` of each spec); `fp16`: the graph converted to fp16 first."""
    require_tensorrt()
    import tensorrt as trt

    if fp16:
        from unfold.model_parts import ModelParts
        from unfold.precision.half import to_half

        model = to_half(ModelParts.viewing(model), "fp16")[0].to_model()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(logger, builder, model)  # (the parser lives to the end)
    config = _builder_config(builder, workspace_bytes=workspace_bytes)
    _add_profile(builder, network, config,
                 {spec.name: ShapeRange(*profile_shapes(spec)) for spec in specs})
    return bytes(_serialize(builder, network, config))


@dataclass
class BuildReport:
    """What `build_engine` built and wrote, and what it took."""

    engine: str
    engine_bytes: int
    build_seconds: float  # the build alone (TensorRT's kernel timing), not parsing or writing
    tensorrt: str  # TensorRT's version (an engine runs only on the version that built it)
    precision: str  # what the build was asked for: fp32 (the graph as it is), fp16, bf16
    tensors: dict[str, int]  # float tensors of the graph TensorRT built, per type (strongly
    # typed: each is computed in the type the graph gives it)
    workspace_bytes: int | None  # None: TensorRT's default
    profile: dict[str, ShapeRange]
    timing_cache: str | None = None
    timing_cache_read_bytes: int = 0  # 0: a new cache
    timing_cache_written_bytes: int = 0
    fp16_range: Fp16RangeReport | None = None  # the caller's check before an fp16 build
    conversion: HalfReport | None = None  # the graph's conversion to `precision`
    tensor_types: dict[str, str] = field(default_factory=dict)  # each float tensor's type

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "engine_bytes": self.engine_bytes,
            "build_seconds": self.build_seconds, "tensorrt": self.tensorrt,
            "strongly_typed": True, "precision": self.precision, "tensors": self.tensors,
            "conversion": self.conversion.to_dict() if self.conversion else None,
            "tensor_types": self.tensor_types,
            "workspace_bytes": self.workspace_bytes,
            "profile": {name: r.to_dict() for name, r in self.profile.items()},
            "timing_cache": None if self.timing_cache is None else {
                "path": self.timing_cache, "read_bytes": self.timing_cache_read_bytes,
                "written_bytes": self.timing_cache_written_bytes},
            "fp16_range": self.fp16_range.to_dict() if self.fp16_range is not None else None,
        }


def build_engine(model: str | Path, out: str | Path, profile: Mapping[str, ShapeRange], *,
                 precision: str | None = None, workspace_bytes: int | None = None,
                 timing_cache: str | Path | None = None, force: bool = False) -> BuildReport:
    """Build the ONNX file `model` (TensorRT reads its external data from beside it) into a
    strongly typed engine with one optimization profile, `profile` (`resolve_profile`), and
    write it to `out` atomically (never over an existing file without `force`). `precision`
    ("fp16" or "bf16") converts the graph to that type first (`unfold.precision.half`: a weight
    past the type's range is refused by name; the nodes that need fp32 stay so, reported);
    without it the graph's own types are built (an fp32 graph in fp32, a file `unfold fold
    --precision` wrote in its type). `workspace_bytes` bounds TensorRT's scratch memory.
    `timing_cache` is read if it exists and written back after the build, atomically too: a
    rebuild by the same TensorRT on the same GPU skips timing the kernels it timed already.
    Parser errors (by node) and a failed build exit 1."""
    model = Path(model)
    if not model.is_file():
        raise UnfoldError(f"{model}: no such file")
    if workspace_bytes is not None and (isinstance(workspace_bytes, bool) or not isinstance(
            workspace_bytes, int) or workspace_bytes < 1):
        raise UnfoldError(f"{option('workspace_bytes', workspace_bytes)}: must be a positive "
                          f"number of bytes (the GPU memory TensorRT may use for scratch while "
                          f"it builds)")
    check_profile(profile)
    if precision is not None:
        check_precision(precision)
    target = check_output_path(out, force=force, inputs=(model,))
    cache_path = None if timing_cache is None else \
        check_timing_cache_path(timing_cache, inputs=(model, target))
    parts = load_onnx_parts(model)
    conversion = None
    if precision is not None:  # (before TensorRT is looked for: a refusal is the same here)
        parts, conversion = to_half(parts, precision)
    tensor_types = tensor_precisions(parts)
    tensors = dict(Counter(tensor_types.values()))
    require_tensorrt()
    import tensorrt as trt

    with ExitStack() as stack:
        source = model
        if conversion is not None:  # TensorRT parses the converted graph from a file of its own
            source = stack.enter_context(staged_onnx(parts, target)).path
        del parts
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network, parser = _parse_onnx(logger, builder, source)
        config = _builder_config(builder, workspace_bytes=workspace_bytes)
        _add_profile(builder, network, config, profile)
        cache, read_bytes = _attach_timing_cache(config, cache_path)
        start = time.perf_counter()
        serialized = _serialize(builder, network, config)
        seconds = time.perf_counter() - start
    engine = bytes(serialized)
    del serialized
    write_bytes_atomic(engine, target, force=force)
    report = BuildReport(str(target), len(engine), seconds, trt.__version__,
                         precision or "fp32", tensors, workspace_bytes, dict(profile),
                         conversion=conversion, tensor_types=tensor_types)
    if cache_path is not None:
        updated = bytes(config.get_timing_cache().serialize())
        write_bytes_atomic(updated, cache_path)
        report.timing_cache = str(cache_path)
        report.timing_cache_read_bytes = read_bytes
        report.timing_cache_written_bytes = len(updated)
    del cache, parser  # (both had to outlive the build)
    return report


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path | None
                         ) -> tuple[trt.ITimingCache | None, int]:
    """The timing cache read from `path` (a new one where the file does not exist) set on
    `config`, and how many bytes were read. The cache must live until the build is done."""
    if path is None:
        return None, 0
    data = b""
    if path.exists():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UnfoldError(f"cannot read {option('timing_cache', str(path))}: "
                              f"{exc.strerror}") from None
    cache = config.create_timing_cache(data)
    if cache is None:
        raise UnfoldError(f"{option('timing_cache', str(path))} is not a TensorRT timing cache "
                          f"(or is truncated); give another file, or delete it to start a new "
                          f"one")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise UnfoldError(f"{option('timing_cache', str(path))} was made by another TensorRT "
                          f"version or on another GPU; give another file, or delete it to "
                          f"start a new one")
    return cache, len(data)


class TrtRunner:
    def __init__(self, model: onnx.ModelProto | bytes, specs: Sequence[InputSpec], *,
                 fp16: bool = False) -> None:
        require_tensorrt()
        import tensorrt as trt
        import torch

        self._torch = torch
        serialized = model if isinstance(model, bytes) else build_serialized(model, specs,
                                                                             fp16=fp16)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise UnfoldError("TensorRT cannot deserialize the engine (built by another "
                              "TensorRT version or GPU?)", ExitCode.BAD_INPUT)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == inputs]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != inputs]
        self.description = f"TensorRT {trt.__version__} (strongly typed" \
                           f"{', the graph in fp16' if fp16 else ''})"
        self._trt = trt

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []  # device buffers live until the stream is done
        for name in self.input_names:
            array = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(array)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, array.data_ptr())
        outputs = {}
        for name in self.output_names:
            dims = self.context.get_tensor_shape(name)
            shape = tuple(dims[i] for i in range(len(dims)))
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            buffer = torch.empty(shape, dtype=_torch_dtype(torch, dtype), device="cuda")
            outputs[name] = buffer
            self.context.set_tensor_address(name, buffer.data_ptr())
        stream = torch.cuda.Stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UnfoldError("TensorRT failed to run the engine", ExitCode.CHECK_FAILED)
        stream.synchronize()
        return {name: buffer.cpu().numpy() for name, buffer in outputs.items()}


def _torch_dtype(torch: Any, dtype: np.dtype) -> Any:
    return {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32,
            "int64": torch.int64, "bool": torch.bool, "int8": torch.int8}[dtype.name]
