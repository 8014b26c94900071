"""Errors the user can fix, and the exit codes of DESIGN.md. Anything else is a bug.

A message names what the user gave as the user gave it: a Python caller wrote
`atol={'logits': 1e-4}`, a command-line user `--atol logits=1e-4`. The library spells its
parameters with `option(...)`; as a Python API it names them as keyword arguments, and the CLI,
for the command it runs, installs the spelling of its flags (`spelled_as`, cli/_common.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # the check ran and failed (mismatch, --strict with norms left)
    BAD_INPUT = 2  # bad usage or bad input
    ENGINE_MISSING = 3  # no TensorRT, no GPU


class UnfoldError(Exception):
    """A problem with what the user gave: the message says what was given and what is valid."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


NO_VALUE: Any = object()
# (parameter, value or NO_VALUE) -> how the caller would write it
Spelling = Callable[[str, Any], str]

# parameters that belong to unfold.Inputs: `inputs.shapes`, spelled Inputs(shapes=...)
_INPUTS_PREFIX = "inputs."


def python_spelling(parameter: str, value: Any = NO_VALUE) -> str:
    """`atol`, `atol=0.0001`, `inputs.shapes`, `Inputs(shapes={'ids': (1, 128)})`."""
    if value is NO_VALUE:
        return parameter
    if parameter.startswith(_INPUTS_PREFIX):
        field = parameter[len(_INPUTS_PREFIX):]
        if field == "shapes" and is_one_shape(value):
            value = [value]  # one shape, in input order
        return f"Inputs({field}={value!r})"
    return f"{parameter}={value!r}"


def is_one_shape(value: Any) -> bool:
    """(1, 3, 224, 224), as against a list of shapes."""
    return isinstance(value, (tuple, list)) and all(isinstance(d, int) for d in value)


_spelling: ContextVar[Spelling] = ContextVar("unfold_spelling", default=python_spelling)


def option(parameter: str, value: Any = NO_VALUE) -> str:
    """A parameter (and the value given for it) as the caller writes it: for the keyword
    arguments of `unfold.convert(...)`, or for the CLI's flags."""
    return _spelling.get()(parameter, value)


@contextmanager
def spelled_as(spelling: Spelling) -> Iterator[None]:
    """Messages raised within name parameters by `spelling`."""
    token = _spelling.set(spelling)
    try:
        yield
    finally:
        _spelling.reset(token)


def check_paths(**paths: Any) -> None:
    """Each keyword argument a file path (str or os.PathLike), or an error naming it: what the
    library's file-taking functions check before any work."""
    import os

    for parameter, path in paths.items():
        if not isinstance(path, (str, os.PathLike)):
            raise UnfoldError(f"{parameter}: expected a file path (str or pathlib.Path), not "
                              f"a {type(path).__name__}")
