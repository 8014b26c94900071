"""The options every command that runs a model shares, and their parsing: where the
architecture comes from, what the inputs are (all optional for a self-describing model), the
tolerances. The strings become the typed values the library takes (`unfold.Inputs`, floats,
dicts) here, before any work, so that a typo costs nothing and fails naming its flag (exit 2):

    --input-shape 1x3x224x224        -> Inputs(shapes=[(1, 3, 224, 224)])
    --input-shape ids:1x128          -> Inputs(shapes={"ids": (1, 128)})
    --int-range 0,30000              -> Inputs(int_range=(0, 30000))
    --dynamic batch,seq              -> Inputs(dynamic=["batch", "seq"])
    --atol 1e-4 / --atol logits=1e-4 -> atol=1e-4 / atol={"logits": 1e-4}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from cli._common import one_of
from unfold.errors import UnfoldError
from unfold.norm_kinds import OFFLINE_KINDS

if TYPE_CHECKING:
    from unfold.inputs import Inputs

ARCH = typer.Option(None, "--arch", help="package.module:factory that builds the architecture "
                                         "of a state dict or training checkpoint.")
ARCH_KWARGS = typer.Option(None, "--arch-kwargs",
                           help="""JSON keyword arguments for --arch, e.g. '{"dim": 384}'.""")
SWAP = typer.Option(None, "--swap", parser=one_of("--swap", OFFLINE_KINDS, "an offline norm"),
                    metavar="KIND",
                    help="With --arch: the offline norm the weights were trained with where the "
                         "architecture builds LayerNorm (un, pn, pn*): unfold.nn.swap_norms is "
                         "applied to it before the weights go in.")
TRUST = typer.Option(False, "--trust", help="Allow loading a fully pickled module, or building "
                                            "the architecture a NAME.arch.json beside the "
                                            "weights names: this RUNS CODE THE FILE CHOOSES. "
                                            "Only for files you trust.")
INPUT_SHAPE = typer.Option([], "--input-shape", help="1x3x224x224, or name:1x128; repeat for "
                                                     "several inputs (in order, or by name).")
INPUT_DTYPE = typer.Option([], "--input-dtype", help="float32 (default), float16, int64, ... "
                                                     "for all inputs, or name:int64.")
INT_RANGE = typer.Option([], "--int-range", help="LOW,HIGH (inclusive) of integer inputs, "
                                                 "e.g. 0,30000 for token ids; or name:0,30000.")
FLOAT_RANGE = typer.Option([], "--float-range", help="LOW,HIGH of float inputs (uniform); "
                                                     "without it, standard normal.")
DYNAMIC = typer.Option(None, "--dynamic", help="Axes that vary: batch, or batch,seq.")
INPUTS = typer.Option(None, "--inputs", help="Real inputs (.npz, arrays named like the inputs) "
                                             "to verify on, besides random batches.")
ATOL = typer.Option([], "--atol", help="Absolute tolerance for every output, or OUTPUT=value.")
RTOL = typer.Option([], "--rtol", help="Tolerance relative to the output's scale "
                                       "(max |reference|), or OUTPUT=value.")

T = TypeVar("T")

_DIMS = re.compile(r"\d+(x\d+)*")
_INT = r"-?\d+"
_FLOAT = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """`1x3x224x224` or `ids:1x128` -> (name or None, shape)."""
    name, _, dims = text.rpartition(":")
    if not _DIMS.fullmatch(dims) or any(int(d) == 0 for d in dims.split("x")):
        raise UnfoldError(f"--input-shape {text!r}: expected dimensions like 1x3x224x224 "
                          f"or name:1x128 (positive integers joined by 'x')")
    return name or None, tuple(int(d) for d in dims.split("x"))


def parse_shapes(texts: list[str]) -> list[tuple[int, ...]] | dict[str | int, tuple[int, ...]]:
    """Shapes in input order, or (where any is named) by name, the unnamed ones by position."""
    parsed = [parse_shape(text) for text in texts]
    if all(name is None for name, _ in parsed):
        return [shape for _, shape in parsed]
    shapes: dict[str | int, tuple[int, ...]] = {}
    position = 0
    for name, shape in parsed:
        if name is None:
            shapes[position] = shape
            position += 1
        else:
            shapes[name] = shape
    return shapes


def parse_per_input(flag: str, texts: list[str], parse: Callable[[str, str], T],
                    example: str) -> T | dict[str, T] | None:
    """`--input-dtype int64` (every input) or `--input-dtype ids:int64 --input-dtype
    mask:bool` (each by name): one value, or a dict by name; not both."""
    if not texts:
        return None
    split = [text.rpartition(":") for text in texts]
    named = [name for name, _, _ in split if name]
    if not named:
        if len(texts) > 1:
            raise UnfoldError(f"{flag} given {len(texts)} times without input names "
                              f"({', '.join(texts)}): give one value for every input, or "
                              f"NAME:VALUE for each, e.g. {flag} {example}")
        return parse(texts[0], texts[0])
    if len(named) < len(texts):
        raise UnfoldError(f"{flag} {' '.join(texts)}: give one value for every input, or "
                          f"NAME:VALUE for each, not both (e.g. {flag} {example})")
    return {name: parse(value, text) for (name, _, value), text in zip(split, texts,
                                                                       strict=True)}


def _dtype(value: str, text: str) -> str:
    from unfold.inputs import DTYPES

    if value not in DTYPES:
        raise UnfoldError(f"--input-dtype {text!r}: valid: {', '.join(DTYPES)}")
    return value


def _range(flag: str, integer: bool) -> Callable[[str, str], Any]:
    """LOW,HIGH -> (low, high): the syntax (low <= high is the library's check)."""
    number = _INT if integer else _FLOAT

    def parse(value: str, text: str) -> tuple[float, float]:
        match = re.fullmatch(rf"\s*({number})\s*,\s*({number})\s*", value)
        if not match:
            example = "0,30000" if integer else "0,1"
            raise UnfoldError(f"{flag} {text!r}: expected LOW,HIGH, e.g. {example}")
        cast = int if integer else float
        return cast(match[1]), cast(match[2])

    return parse


def parse_dynamic(text: str | None) -> list[str]:
    """`batch` or `batch,seq` -> the axis names."""
    from unfold.inputs import DYNAMIC_AXES

    if not text:
        return []
    words = [w.strip() for w in text.split(",")]
    for word in words:
        if word not in DYNAMIC_AXES:
            raise UnfoldError(f"--dynamic {text!r}: {word!r} is not an axis name; "
                              f"valid: {', '.join(DYNAMIC_AXES)} (e.g. --dynamic batch,seq)")
    return words


def input_options(shapes: list[str], dtypes: list[str], int_ranges: list[str],
                  float_ranges: list[str], dynamic: str | None, npz: Path | None) -> Inputs:
    """The input flags, parsed into what the library takes."""
    from unfold.inputs import Inputs

    return Inputs(shapes=parse_shapes(shapes),
                  dtype=parse_per_input("--input-dtype", dtypes, _dtype, "ids:int64"),
                  int_range=parse_per_input("--int-range", int_ranges,
                                            _range("--int-range", True), "ids:0,30000"),
                  float_range=parse_per_input("--float-range", float_ranges,
                                              _range("--float-range", False), "images:0,1"),
                  dynamic=parse_dynamic(dynamic), npz=npz)


def parse_tolerance(flag: str, texts: list[str]) -> float | dict[str, float] | None:
    """`--atol 1e-4` (every output) or `--atol logits=1e-4` (one output, by name)."""
    values: dict[str, float] = {}
    every: float | None = None
    for text in texts:
        name, eq, number = text.rpartition("=")
        try:
            value = float(number)
            assert value >= 0 and value != float("inf")
        except (ValueError, AssertionError):
            raise UnfoldError(f"{flag} {text!r}: expected a number >= 0 (e.g. 1e-4) or "
                              f"OUTPUT=number (e.g. logits=1e-4)") from None
        if eq:
            values[name] = value
        else:
            every = value
    if every is not None and values:
        raise UnfoldError(f"{flag} {' '.join(texts)}: give one tolerance for every output, or "
                          f"OUTPUT=value for each, not both")
    return every if every is not None else (values or None)


def parse_arch_kwargs(text: str | None) -> dict[str, Any] | None:
    """`--arch-kwargs '{"dim": 384}'` -> the keyword arguments."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnfoldError(f"--arch-kwargs {text!r} is not JSON ({exc.msg}); "
                          """e.g. --arch-kwargs '{"dim": 384, "depth": 12}'""") from None
    if not isinstance(value, dict):
        raise UnfoldError(f"--arch-kwargs {text!r}: expected a JSON object of keyword arguments")
    return value


def progress(message: str) -> None:
    import sys

    from unfold.interrupts import raise_deferred

    raise_deferred()

    print(f"[unfold] {message}", file=sys.stderr, flush=True)
