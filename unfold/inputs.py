"""What a model takes: one `InputSpec` per input (name, shape, dtype, value range, dynamic
axes), parsed from the command line (`--input-shape ids:1x128 --input-dtype int64
--int-range 0,30000 --float-range 0,1 --dynamic batch,seq`), read from a self-describing
model, or read from an `.npz`; and random batches drawn from the specs for verification.

numpy only: loading, exporting and verifying all speak this vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unfold.errors import UnfoldError

if TYPE_CHECKING:
    import onnx

DTYPES: dict[str, type] = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64,
    "int64": np.int64, "int32": np.int32, "bool": np.bool_,
}
# --dynamic names the axes that vary, the same for every input of rank > axis
DYNAMIC_AXES = {"batch": 0, "seq": 1}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # integers: uniform in [low, high] inclusive; floats: uniform in [low, high) (None: normal)
    value_range: tuple[float, float] | None = None
    dynamic: Mapping[int, str] = field(default_factory=dict)  # axis -> dimension name

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(DTYPES[self.dtype], np.integer)

    def describe(self) -> str:
        """`ids: 2x128 int64 in [0, 30000], dynamic batch, seq`"""
        text = f"{self.name}: {'x'.join(map(str, self.shape))} {self.dtype}"
        if self.value_range:
            text += f" in [{self.value_range[0]}, {self.value_range[1]}]"
        if self.dynamic:
            text += f", dynamic {', '.join(self.dynamic[a] for a in sorted(self.dynamic))}"
        return text

    def with_batch(self, batch: int) -> InputSpec:
        return replace(self, shape=(batch, *self.shape[1:]))


def parse_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """`1x3x224x224` or `ids:1x128` -> (name or None, shape)."""
    name, _, dims = text.rpartition(":")
    if not re.fullmatch(r"\d+(x\d+)*", dims) or any(int(d) == 0 for d in dims.split("x")):
        raise UnfoldError(f"--input-shape {text!r}: expected dimensions like 1x3x224x224 "
                          f"or name:1x128 (positive integers joined by 'x')")
    return name or None, tuple(int(d) for d in dims.split("x"))


def _named(option: str, values: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """`--input-dtype int64` (every input) or `ids:int64` (one input) -> name -> value."""
    out: dict[str, str] = {}
    for value in values:
        name, _, text = value.rpartition(":")
        if name and name not in names:
            raise UnfoldError(f"{option} {value!r}: the model has no input {name!r}; "
                              f"its inputs: {', '.join(names)}")
        for target in [name] if name else names:
            out[target] = text
    return out


def _parse_range(option: str, text: str, integer: bool) -> tuple[float, float]:
    number = r"-?\d+" if integer else r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    match = re.fullmatch(rf"\s*({number})\s*,\s*({number})\s*", text)
    if not match or float(match[1]) > float(match[2]):
        example = "0,30000" if integer else "0,1"
        raise UnfoldError(f"{option} {text!r}: expected LOW,HIGH, e.g. {example}")
    cast = int if integer else float
    return cast(match[1]), cast(match[2])


def parse_dynamic(text: str | None) -> dict[int, str]:
    """`batch` or `batch,seq` -> axis -> name."""
    if not text:
        return {}
    axes = {}
    for word in (w.strip() for w in text.split(",")):
        if word not in DYNAMIC_AXES:
            raise UnfoldError(f"--dynamic {text!r}: {word!r} is not an axis name; "
                              f"valid: {', '.join(DYNAMIC_AXES)} (e.g. --dynamic batch,seq)")
        axes[DYNAMIC_AXES[word]] = word
    return axes


def check_input_options(*, shapes: Sequence[str] = (), dtypes: Sequence[str] = (),
                        int_ranges: Sequence[str] = (), float_ranges: Sequence[str] = (),
                        dynamic: str | None = None) -> None:
    """Everything about the input options that can be checked without the model (their
    syntax), so that a typo fails before minutes of loading and exporting, not after."""
    for text in shapes:
        parse_shape(text)
    for value in dtypes:
        text = value.rpartition(":")[2]
        if text not in DTYPES:
            raise UnfoldError(f"--input-dtype {text!r}: valid: {', '.join(DTYPES)}")
    for option, values, integer in (("--int-range", int_ranges, True),
                                    ("--float-range", float_ranges, False)):
        for value in values:
            _parse_range(option, value.rpartition(":")[2], integer)
    parse_dynamic(dynamic)


def _check_range_targets(option: str, values: Sequence[str], specs: Sequence[InputSpec],
                         integer: bool) -> None:
    """A range that applies to no input is a mistake, not something to ignore."""
    kind, a_kind = ("integer", "an integer") if integer else ("float", "a float")
    fitting = [s.name for s in specs if s.is_integer == integer]
    inputs = ", ".join(f"{s.name} ({s.dtype})" for s in specs)
    for value in values:
        name = value.rpartition(":")[0]
        if name and name not in fitting and any(s.name == name for s in specs):
            raise UnfoldError(f"{option} {value!r}: input {name} is not {a_kind} input; "
                              f"the model's inputs: {inputs}")
        if not name and not fitting:
            raise UnfoldError(f"{option} {value!r}: the model has no {kind} input to apply "
                              f"it to; its inputs: {inputs}")


def specs_from_options(input_names: Sequence[str], *, shapes: Sequence[str],
                       optional_names: Sequence[str] = (),
                       dtypes: Sequence[str] = (), int_ranges: Sequence[str] = (),
                       float_ranges: Sequence[str] = (),
                       dynamic: str | None = None,
                       defaults: Sequence[InputSpec] = (),
                       partial: Mapping[str, Sequence[int | str]] | None = None
                       ) -> list[InputSpec]:
    """The specs the command line describes, over `defaults` (what the model itself says).

    Shapes are given in input order or by name; every input needs one (from either).
    `optional_names` (forward's parameters with defaults) are used only where given.
    `partial`: what the model knows of an input's shape that has no default (an ONNX input's
    dims, a name where one varies), for the hint when none is given."""
    by_name = {spec.name: spec for spec in defaults}
    known = list(input_names) + list(optional_names)
    positional = iter(input_names)
    for text in shapes:
        name, shape = parse_shape(text)
        if name is None:
            name = next(positional, None)
            if name is None:
                raise UnfoldError(f"--input-shape given {len(shapes)} times but the model "
                                  f"takes {len(input_names)} input(s): {', '.join(input_names)}")
        elif name not in known:
            raise UnfoldError(f"--input-shape {text!r}: the model has no input {name!r}; "
                              f"its inputs: {_describe_names(input_names, optional_names)}")
        old = by_name.get(name)
        by_name[name] = (replace(old, shape=shape) if old else InputSpec(name, shape))
    missing = [n for n in input_names if n not in by_name]
    if missing:
        raise UnfoldError(_no_shape_message(missing, partial or {}))
    input_names = [n for n in known if n in by_name]  # forward's order
    for name, text in _named("--input-dtype", dtypes, input_names).items():
        if text not in DTYPES:
            raise UnfoldError(f"--input-dtype {text!r}: valid: {', '.join(DTYPES)}")
        by_name[name] = replace(by_name[name], dtype=text)
    for option, values, integer in (("--int-range", int_ranges, True),
                                    ("--float-range", float_ranges, False)):
        _check_range_targets(option, values, [by_name[n] for n in input_names], integer)
        for name, text in _named(option, values, input_names).items():
            if by_name[name].is_integer == integer:
                by_name[name] = replace(by_name[name],
                                        value_range=_parse_range(option, text, integer))
    axes = parse_dynamic(dynamic)
    specs = []
    for name in input_names:
        spec = by_name[name]
        if axes:
            spec = replace(spec, dynamic={a: n for a, n in axes.items() if a < len(spec.shape)})
        if spec.is_integer and spec.value_range is None:
            raise UnfoldError(f"input {name} is {spec.dtype}: give the valid values with "
                              f"--int-range {name}:LOW,HIGH (e.g. token ids 0,30000)")
        specs.append(spec)
    return specs


def _no_shape_message(missing: Sequence[str], partial: Mapping[str, Sequence[int | str]]) -> str:
    """What to give, in the model's own names and, where it knows them, shapes."""
    known = [n for n in missing if n in partial]
    if not known:
        return (f"no shape for input(s) {', '.join(missing)}: give --input-shape NAME:DIMS "
                f"for each (e.g. --input-shape {missing[0]}:1x128), or --inputs FILE.npz")
    takes = ", ".join(f"{n}: {'x'.join(map(str, partial[n]))}" for n in known)
    example = " ".join(f"--input-shape {n}:"
                       + "x".join(str(d) if isinstance(d, int) else "1" for d in partial[n])
                       for n in known)
    return (f"no shape for input(s) {', '.join(missing)}: the model takes {takes}; give the "
            f"varying dimensions, e.g. {example} (or --inputs FILE.npz)")


def _describe_names(required: Sequence[str], optional: Sequence[str]) -> str:
    text = ", ".join(required)
    if optional:
        text += f" (optional, used when given a shape: {', '.join(optional)})"
    return text


def specs_from_arrays(arrays: Mapping[str, np.ndarray],
                      dynamic: Mapping[str, Mapping[int, str]] | None = None
                      ) -> list[InputSpec]:
    """Specs that describe example arrays (integer ranges from the values seen)."""
    specs = []
    for name, array in arrays.items():
        dtype = np.dtype(array.dtype).name
        if dtype not in DTYPES:
            raise UnfoldError(f"input {name} has dtype {dtype}; supported: {', '.join(DTYPES)}")
        value_range: tuple[float, float] | None = None
        if np.issubdtype(array.dtype, np.integer) and array.size:
            value_range = (int(array.min()), int(array.max()))
        elif np.issubdtype(array.dtype, np.floating) and array.size and array.min() < array.max():
            value_range = (float(array.min()), float(array.max()))
        specs.append(InputSpec(name, tuple(array.shape), dtype, value_range,
                               dict((dynamic or {}).get(name, {}))))
    return specs


def random_batch(specs: Sequence[InputSpec], rng: np.random.Generator,
                 batch: int | None = None,
                 sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """One batch drawn from the specs: integers uniform in their range, floats uniform in
    theirs (standard normal without one), booleans fair coins. `batch` replaces axis 0;
    `sizes` (dimension name -> size) every dynamic axis of that name."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple((sizes or {}).get(spec.dynamic.get(i, ""), d)
                      for i, d in enumerate(spec.shape))
        if batch is not None:
            shape = (batch, *shape[1:])
        dtype = DTYPES[spec.dtype]
        if spec.dtype == "bool":
            out[spec.name] = rng.random(shape) < 0.5
        elif spec.is_integer:
            low, high = spec.value_range or (0, 1)
            out[spec.name] = rng.integers(int(low), int(high), size=shape, endpoint=True,
                                          dtype=dtype)
        elif spec.value_range:
            out[spec.name] = rng.uniform(*spec.value_range, size=shape).astype(dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
    return out


def load_npz(path: str | Path, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Real inputs from an .npz: arrays named like the model's inputs (or arr_0, arr_1, ...
    in input order), checked against the specs' dtypes and fixed axes."""
    path = Path(path)
    if not path.is_file():
        raise UnfoldError(f"--inputs {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:
        raise UnfoldError(f"--inputs {path} is not a readable .npz: "
                          f"{type(exc).__name__}: {exc}") from None
    names = [s.name for s in specs]
    if set(arrays) == {f"arr_{i}" for i in range(len(arrays))} and len(arrays) == len(names):
        arrays = {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}
    if set(arrays) != set(names):
        raise UnfoldError(f"--inputs {path} holds {sorted(arrays)}; the model takes "
                          f"{names} (name the arrays so, or save them in that order)")
    for spec in specs:
        array = arrays[spec.name]
        if np.dtype(array.dtype).name != spec.dtype:
            raise UnfoldError(f"--inputs {path}: {spec.name} is {array.dtype}, "
                              f"the model takes {spec.dtype}")
        fixed_ok = len(array.shape) == len(spec.shape) and all(
            a == s or i in spec.dynamic
            for i, (a, s) in enumerate(zip(array.shape, spec.shape, strict=True)))
        if not fixed_ok:
            raise UnfoldError(f"--inputs {path}: {spec.name} has shape {tuple(array.shape)}, "
                              f"the model takes {spec.describe()}")
    return {name: arrays[name] for name in names}


@dataclass
class InputOptions:
    """What the command line says about the inputs (all optional for a self-describing
    model): see unfold.inputs."""
    shapes: Sequence[str] = ()
    dtypes: Sequence[str] = ()
    int_ranges: Sequence[str] = ()
    float_ranges: Sequence[str] = ()
    dynamic: str | None = None
    npz: str | Path | None = None

    @property
    def given(self) -> bool:
        return bool(self.shapes or self.dtypes or self.int_ranges or self.float_ranges
                    or self.dynamic)


def onnx_input_specs(model: onnx.ModelProto, options: InputOptions | None = None, *,
                     batch: int | None = None) -> list[InputSpec]:
    """An ONNX model's inputs: its static dims, the options for the rest. With `batch`, an
    input whose only varying dimension is the first takes `batch` there (what `bench` runs)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    options = options or InputOptions()
    defaults, names = [], []
    partial: dict[str, list[int | str]] = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        names.append(value.name)
        partial[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                               for d in tensor.shape.dim]
        dynamic = {i: d.dim_param or f"dim{i}" for i, d in enumerate(tensor.shape.dim)
                   if not d.HasField("dim_value")}
        dtype = np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)).name
        if not dynamic:
            defaults.append(InputSpec(value.name, tuple(dims), dtype))
        elif batch is not None and set(dynamic) == {0}:
            defaults.append(InputSpec(value.name, (batch, *dims[1:]), dtype,
                                      dynamic={0: "batch"}))
    return specs_from_options(names, shapes=options.shapes, dtypes=options.dtypes,
                              int_ranges=options.int_ranges,
                              float_ranges=options.float_ranges, dynamic=options.dynamic,
                              defaults=defaults, partial=partial)
