"""What a model takes: one `InputSpec` per input (name, shape, dtype, value range, dynamic
axes), from what the caller says (`Inputs(shapes={"ids": (1, 128)}, dtype="int64",
int_range=(0, 30000), dynamic=["batch", "seq"])`; the CLI parses its flags into one, in
cli/_inputs.py), from a self-describing model, or from an `.npz`; and random batches drawn
from the specs for verification.

numpy only: loading, exporting and verifying all speak this vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from unfold.errors import UnfoldError, option

if TYPE_CHECKING:
    import onnx

DTYPES: dict[str, type] = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "bool": np.bool_,
}
# `dynamic` names the axes that vary, the same for every input of rank > axis
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


@dataclass(frozen=True)
class Inputs:
    """What the caller says about a model's inputs; every field is optional (a self-describing
    model says it all itself), and each is given for every input or per input by name:

        Inputs(shapes=[(2, 1, 8, 8)], float_range=(0, 1), dynamic=["batch"])
        Inputs(shapes={"input_ids": (2, 12), "attention_mask": (2, 12)}, dtype="int64",
               int_range={"input_ids": (0, 99), "attention_mask": (0, 1)},
               dynamic=["batch", "seq"])

    shapes: in input order (a sequence), or a mapping by name (or position, an int)
    dtype: one of DTYPES for every input, or a mapping by name
    int_range: (low, high), inclusive, for every integer input, or a mapping by name
    float_range: (low, high) for every float input (uniform; without one, standard normal)
    dynamic: the axes that vary, among DYNAMIC_AXES ("batch", "seq")
    npz: real inputs to verify on as well (.npz, arrays named like the inputs)
    """
    shapes: Sequence[Sequence[int]] | Mapping[str | int, Sequence[int]] = ()
    dtype: str | Mapping[str, str] | None = None
    int_range: tuple[int, int] | Mapping[str, tuple[int, int]] | None = None
    float_range: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None
    dynamic: Sequence[str] = ()
    npz: str | Path | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (`from_json` reads it back): what a child process is sent."""
        checked = check_inputs(self)
        return {"shapes": [[key, list(shape)] for key, shape in checked.shapes],
                "dtype": self.dtype if not isinstance(self.dtype, Mapping) else dict(self.dtype),
                "int_range": _range_json(checked.int_range),
                "float_range": _range_json(checked.float_range),
                "dynamic": list(self.dynamic),
                "npz": str(self.npz) if self.npz is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Inputs:
        def ranges(value: Any) -> Any:
            if value is None or isinstance(value, list):
                return tuple(value) if value is not None else None
            return {name: tuple(pair) for name, pair in value.items()}

        return cls(shapes={key: tuple(shape) for key, shape in data["shapes"]},
                   dtype=data["dtype"], int_range=ranges(data["int_range"]),
                   float_range=ranges(data["float_range"]), dynamic=data["dynamic"],
                   npz=data["npz"])


def _range_json(value: Any) -> Any:
    if value is None or isinstance(value, tuple):
        return list(value) if value is not None else None
    return {name: list(pair) for name, pair in value.items()}


@dataclass(frozen=True)
class _Checked:
    """An `Inputs` whose values were checked, in one form: shapes as (name or position,
    shape) in the order given, each per-input field a single value or a dict by name."""
    shapes: list[tuple[str | int, tuple[int, ...]]]
    dtype: str | dict[str, str] | None
    int_range: tuple[int, int] | dict[str, tuple[int, int]] | None
    float_range: tuple[float, float] | dict[str, tuple[float, float]] | None
    dynamic: dict[int, str]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _check_shape(given: Any, shape: Any) -> tuple[int, ...]:
    """`given`: what to show of the shapes the caller gave, with this one."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) \
            or not all(_is_int(d) and d > 0 for d in shape):
        given = option("inputs.shapes", given)
        raise UnfoldError(f"{given}: a shape is a tuple of positive ints, e.g. "
                          f"{option('inputs.shapes', (1, 3, 224, 224))} or "
                          f"{option('inputs.shapes', {'input_ids': (1, 128)})}")
    return tuple(int(d) for d in shape)


def _per_input(parameter: str, value: Any, check: Any) -> Any:
    """A per-input field: one value for every input, or a mapping by name; each checked."""
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str):
                raise UnfoldError(f"{option(parameter, dict(value))}: keys are input names "
                                  f"(str), not {type(name).__name__}")
        return {name: check(item, {name: item}) for name, item in value.items()}
    return check(value, value)


def _check_dtype(value: Any, given: Any) -> str:
    if not isinstance(value, str) or value not in DTYPES:
        raise UnfoldError(f"{option('inputs.dtype', given)}: valid dtypes: {', '.join(DTYPES)}")
    return str(value)


def _range_checker(parameter: str, integer: bool) -> Any:
    def check(value: Any, given: Any) -> tuple[float, float]:
        kinds = _is_int if integer else _is_number
        ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
              and all(kinds(v) and (_is_int(v) or np.isfinite(v)) for v in value)
              and value[0] <= value[1])
        if not ok:
            example = (0, 30000) if integer else (0.0, 1.0)
            what = "ints" if integer else "numbers"
            raise UnfoldError(f"{option(parameter, given)}: a range is (low, high), two finite "
                              f"{what} with low <= high, e.g. {option(parameter, example)}")
        cast = int if integer else float
        return cast(value[0]), cast(value[1])

    return check


def check_seed(seed: Any) -> None:
    """The seed of the random batches: an int >= 0 (what numpy's generators take)."""
    if not _is_int(seed) or seed < 0:
        raise UnfoldError(f"{option('seed', seed)}: a seed is an int >= 0")


def check_inputs(inputs: Inputs) -> _Checked:
    """Everything about `inputs` that can be checked without the model (types and values),
    so that a mistake fails before minutes of loading and exporting, not after."""
    if not isinstance(inputs, Inputs):
        raise UnfoldError(f"inputs: expected an unfold.Inputs(...), not "
                          f"{type(inputs).__name__}")
    shapes: list[tuple[str | int, tuple[int, ...]]] = []
    if isinstance(inputs.shapes, Mapping):
        for key, shape in inputs.shapes.items():
            if not isinstance(key, str) and not (_is_int(key) and key >= 0):
                raise UnfoldError(f"{option('inputs.shapes', dict(inputs.shapes))}: keys are "
                                  f"input names (str) or positions (int >= 0), not {key!r}")
            shapes.append((key, _check_shape({key: shape}, shape)))
    elif isinstance(inputs.shapes, (str, bytes)) or not isinstance(inputs.shapes, Sequence):
        raise UnfoldError(f"{option('inputs.shapes', inputs.shapes)}: expected shapes in "
                          f"input order, e.g. {option('inputs.shapes', (1, 3, 224, 224))}, or "
                          f"by name, e.g. {option('inputs.shapes', {'input_ids': (1, 128)})}")
    else:
        shapes = [(i, _check_shape(list(inputs.shapes), shape))
                  for i, shape in enumerate(inputs.shapes)]
    dtype = None if inputs.dtype is None else \
        _per_input("inputs.dtype", inputs.dtype, _check_dtype)
    ranges = {}
    for parameter, integer in (("inputs.int_range", True), ("inputs.float_range", False)):
        value = getattr(inputs, parameter.removeprefix("inputs."))
        ranges[parameter] = None if value is None else \
            _per_input(parameter, value, _range_checker(parameter, integer))
    dynamic = () if inputs.dynamic is None else inputs.dynamic
    if isinstance(dynamic, str) or not isinstance(dynamic, Sequence) \
            or not all(isinstance(w, str) for w in dynamic):
        raise UnfoldError(f"{option('inputs.dynamic', dynamic)}: expected axis names, e.g. "
                          f"{option('inputs.dynamic', ['batch', 'seq'])}")
    axes = {}
    for word in dynamic:
        if word not in DYNAMIC_AXES:
            raise UnfoldError(f"{option('inputs.dynamic', list(dynamic))}: {word!r} is not an "
                              f"axis name; valid: {', '.join(DYNAMIC_AXES)}")
        axes[DYNAMIC_AXES[word]] = word
    if inputs.npz is not None and not isinstance(inputs.npz, (str, os.PathLike)):
        raise UnfoldError(f"{option('inputs.npz', inputs.npz)}: expected the path of an .npz "
                          f"file, not a {type(inputs.npz).__name__}")
    return _Checked(shapes, dtype, ranges["inputs.int_range"], ranges["inputs.float_range"],
                    axes)


def _check_range_targets(parameter: str, value: Any, specs: Sequence[InputSpec],
                         integer: bool) -> None:
    """A range that applies to no input is a mistake, not something to ignore."""
    kind, a_kind = ("integer", "an integer") if integer else ("float", "a float")
    fitting = [s.name for s in specs if s.is_integer == integer]
    inputs = ", ".join(f"{s.name} ({s.dtype})" for s in specs)
    if isinstance(value, dict):
        for name, pair in value.items():
            if name not in fitting:
                raise UnfoldError(f"{option(parameter, {name: pair})}: input {name} is not "
                                  f"{a_kind} input; the model's inputs: {inputs}")
    elif not fitting:
        raise UnfoldError(f"{option(parameter, value)}: the model has no {kind} input to "
                          f"apply it to; its inputs: {inputs}")


def _check_fits(parameter: str, given: Any, pair: tuple[float, float], spec: InputSpec) -> None:
    """A range the input's dtype holds (int32 ids up to 2**31 - 1, fp16 up to 65504)."""
    dtype = np.dtype(DTYPES[spec.dtype])
    if dtype == np.bool_:
        return
    info: Any = np.iinfo(dtype) if spec.is_integer else ml_dtypes.finfo(dtype)
    low, high = (int(info.min), int(info.max)) if spec.is_integer else \
        (float(info.min), float(info.max))
    holds = f"{low} to {high}" if spec.is_integer else f"{low:g} to {high:g}"
    if pair[0] < low or pair[1] > high:
        raise UnfoldError(f"{option(parameter, given)}: input {spec.name} is {spec.dtype}, "
                          f"which holds {holds}")


def _check_names(parameter: str, value: Any, names: Sequence[str]) -> None:
    if isinstance(value, dict):
        for name, item in value.items():
            if name not in names:
                raise UnfoldError(f"{option(parameter, {name: item})}: the model has no input "
                                  f"{name!r}; its inputs: {', '.join(names)}")


def specs_from_inputs(input_names: Sequence[str], inputs: Inputs | None = None, *,
                      optional_names: Sequence[str] = (),
                      defaults: Sequence[InputSpec] = (),
                      partial: Mapping[str, Sequence[int | str]] | None = None,
                      npz_helps: bool = True) -> list[InputSpec]:
    """The specs `inputs` describes, over `defaults` (what the model itself says).

    Shapes are given in input order or by name; every input needs one (from either).
    `optional_names` (forward's parameters with defaults) are used only where given.
    `partial`: what the model knows of an input's shape that has no default (an ONNX input's
    dims, a name where one varies), for the hint when none is given; `npz_helps`: whether
    real inputs (`Inputs(npz=...)`) would stand in for a missing shape, to say so."""
    given = check_inputs(inputs or Inputs())
    by_name = {spec.name: spec for spec in defaults}
    known = list(input_names) + list(optional_names)
    given_names: set[str] = set()
    for key, shape in given.shapes:
        if not isinstance(key, str):
            if key >= len(input_names):
                raise UnfoldError(
                    f"{option('inputs.shapes', _given_shapes(inputs))}: {len(given.shapes)} "
                    f"shape(s) in input order, "
                    f"but the model takes {len(input_names)} input(s): "
                    f"{', '.join(input_names)}")
            name = input_names[key]
        elif key not in known:
            raise UnfoldError(f"{option('inputs.shapes', {key: shape})}: the model has no "
                              f"input {key!r}; its inputs: "
                              f"{_describe_names(input_names, optional_names)}")
        else:
            name = key
        if name in given_names:
            raise UnfoldError(f"{option('inputs.shapes', _given_shapes(inputs))}: input {name} "
                              f"is given two shapes (by position {input_names.index(name)} "
                              f"and by name?); give each input one")
        given_names.add(name)
        old = by_name.get(name)
        by_name[name] = (replace(old, shape=shape) if old else InputSpec(name, shape))
    missing = [n for n in input_names if n not in by_name]
    if missing:
        raise UnfoldError(_no_shape_message(missing, partial or {}, npz_helps))
    input_names = [n for n in known if n in by_name]  # forward's order
    if given.dtype is not None:
        _check_names("inputs.dtype", given.dtype, input_names)
        for name in input_names:
            dtype = given.dtype.get(name) if isinstance(given.dtype, dict) else given.dtype
            if dtype is not None:
                by_name[name] = replace(by_name[name], dtype=dtype)
    for parameter, value, integer in (("inputs.int_range", given.int_range, True),
                                      ("inputs.float_range", given.float_range, False)):
        if value is None:
            continue
        _check_names(parameter, value, input_names)
        _check_range_targets(parameter, value, [by_name[n] for n in input_names], integer)
        for name in input_names:
            pair = value.get(name) if isinstance(value, dict) else value
            if pair is not None and by_name[name].is_integer == integer:
                _check_fits(parameter, {name: pair} if isinstance(value, dict) else value,
                            pair, by_name[name])
                by_name[name] = replace(by_name[name], value_range=pair)
    specs = []
    for name in input_names:
        spec = by_name[name]
        if given.dynamic:
            spec = replace(spec, dynamic={a: n for a, n in given.dynamic.items()
                                          if a < len(spec.shape)})
        if spec.is_integer and spec.value_range is None:
            raise UnfoldError(f"input {name} is {spec.dtype}: give its valid values, e.g. "
                              f"{option('inputs.int_range', {name: (0, 30000)})} for token ids")
        specs.append(spec)
    return specs


def _given_shapes(inputs: Inputs | None) -> Any:
    shapes = inputs.shapes if inputs is not None else ()
    return dict(shapes) if isinstance(shapes, Mapping) else list(shapes)


def _no_shape_message(missing: Sequence[str], partial: Mapping[str, Sequence[int | str]],
                      npz_helps: bool) -> str:
    """What to give, in the model's own names and, where it knows them, shapes."""
    known = [n for n in missing if n in partial]
    npz = option("inputs.npz", "FILE.npz")
    if not known:
        return (f"no shape for input(s) {', '.join(missing)}: give one for each, e.g. "
                f"{option('inputs.shapes', {missing[0]: (1, 128)})}"
                + (f", or real inputs with {npz}" if npz_helps else ""))
    takes = ", ".join(f"{n}: {'x'.join(map(str, partial[n]))}" for n in known)
    example = option("inputs.shapes", {n: tuple(d if isinstance(d, int) else 1
                                                for d in partial[n]) for n in known})
    return (f"no shape for input(s) {', '.join(missing)}: the model takes {takes}; give the "
            f"varying dimensions, e.g. {example}"
            + (f" (or real inputs with {npz})" if npz_helps else ""))


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


def read_npz(path: str | Path, *, parameter: str = "inputs.npz") -> dict[str, np.ndarray]:
    """The arrays of an .npz (never unpickling), or an error naming the file (as the option
    `parameter` that gave it)."""
    path = Path(path)
    if not path.is_file():
        raise UnfoldError(f"{option(parameter, str(path))}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as exc:
        raise UnfoldError(f"{option(parameter, str(path))} is not a readable .npz: "
                          f"{type(exc).__name__}: {exc}") from None


def load_npz(path: str | Path, specs: Sequence[InputSpec], *,
             parameter: str = "inputs.npz") -> dict[str, np.ndarray]:
    """Real inputs from an .npz: arrays named like the model's inputs (or arr_0, arr_1, ...
    in input order), checked against the specs' dtypes and fixed axes."""
    arrays = read_npz(path, parameter=parameter)
    given = option(parameter, str(path))
    names = [s.name for s in specs]
    if set(arrays) == {f"arr_{i}" for i in range(len(arrays))} and len(arrays) == len(names):
        arrays = {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}
    if set(arrays) != set(names):
        raise UnfoldError(f"{given} holds {sorted(arrays)}; the model takes "
                          f"{names} (name the arrays so, or save them in that order)")
    for spec in specs:
        array = arrays[spec.name]
        if np.dtype(array.dtype).name != spec.dtype:
            raise UnfoldError(f"{given}: {spec.name} is {array.dtype}, "
                              f"the model takes {spec.dtype}")
        fixed_ok = len(array.shape) == len(spec.shape) and all(
            a == s or i in spec.dynamic
            for i, (a, s) in enumerate(zip(array.shape, spec.shape, strict=True)))
        if not fixed_ok:
            raise UnfoldError(f"{given}: {spec.name} has shape {tuple(array.shape)}, "
                              f"the model takes {spec.describe()}")
    return {name: arrays[name] for name in names}


def onnx_input_specs(model: onnx.ModelProto, inputs: Inputs | None = None, *,
                     batch: int | None = None, npz_helps: bool = True) -> list[InputSpec]:
    """An ONNX model's inputs: its static dims, what `inputs` says for the rest (its real
    inputs' shapes, without shapes given). With `batch`, an input whose only varying dimension
    is the first takes `batch` there (what `bench` runs). `npz_helps`: whether to suggest
    real inputs when a shape is missing (not where the caller cannot give them)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    arrays = read_npz(inputs.npz) if inputs is not None and inputs.npz is not None \
        and not inputs.shapes else {}
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
        elif value.name in arrays and arrays[value.name].ndim == len(dims):
            (own,) = specs_from_arrays({value.name: arrays[value.name]})
            defaults.append(replace(own, dtype=dtype, dynamic=dynamic))
    return specs_from_inputs(names, inputs, defaults=defaults, partial=partial,
                             npz_helps=npz_helps)
