"""What every command shares: the --json and --debug options, results on stdout (a table, or
JSON with --json), user errors as `error: ...` and an exit code (a traceback only with
--debug), a status line on stderr."""

from __future__ import annotations

import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import typer
from rich.console import Console

from unfold.errors import NO_VALUE, ExitCode, UnfoldError, is_one_shape, spelled_as

# Plain lines never wrap (paths stay whole, greppable); tables fit a terminal, and piped into
# a file or another program (where rich would assume 80 columns) keep one row per line.
# No markup or highlighting: file names with [brackets] print as given.
PIPED_WIDTH = 10_000
stdout = Console(soft_wrap=True, markup=False, highlight=False,
                 width=None if sys.stdout.isatty() else PIPED_WIDTH)

JSON = typer.Option(False, "--json", help="Print the result as JSON (for programs).")
DEBUG = typer.Option(False, "--debug", help="Show tracebacks.")


def one_of(option: str, registry: Iterable[str], what: str) -> Callable[[str], str]:
    """A parser for an option whose values are a registry's names: a typo fails while the
    command line is parsed (exit 2), naming the valid ones."""
    names = list(registry)

    def parse(value: str) -> str:
        if value not in names:
            raise typer.BadParameter(f"{value!r} is not {what}; valid: {', '.join(names)}",
                                     param_hint=option)
        return value

    return parse


def show(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """The result on stdout: `render` it as tables, or its `to_dict()` as JSON."""
    if as_json:
        data = result.to_dict() if hasattr(result, "to_dict") else result
        stdout.print_json(json.dumps(data))
    else:
        render(result)


# The library's parameters (unfold.errors.option) as this CLI's flags, where the name differs
# from the parameter's with '-' for '_'; `False` parameters that a --no-... flag sets.
FLAGS = {
    "inputs.shapes": "--input-shape", "inputs.dtype": "--input-dtype",
    "inputs.int_range": "--int-range", "inputs.float_range": "--float-range",
    "inputs.dynamic": "--dynamic", "inputs.npz": "--inputs", "batches": "--batch",
    "profile": "--shapes",
}
# given once per value: --skip a --skip b
REPEATED = {"skip"}
NEGATED = {"verify": "--no-verify", "memory": "--no-memory"}
# values by input or output name, one flag each: NAME:VALUE, OUTPUT=VALUE
BY_NAME = {"inputs.shapes": ":", "inputs.dtype": ":", "inputs.int_range": ":",
           "inputs.float_range": ":", "profile": ":", "atol": "=", "rtol": "="}


def _text(value: Any, parameter: str = "") -> str:
    """One value as a flag takes it: 0,30000, batch,seq, 1,8, 0.0001, 1x8/4x8/16x8, and
    a shape 1x3x224x224."""
    if hasattr(value, "describe"):  # (a shape range)
        return str(value.describe())
    if parameter == "inputs.shapes" and is_one_shape(value):
        return "x".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ",".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value)
    return str(value)


def cli_spelling(parameter: str, value: Any = NO_VALUE) -> str:
    """A library parameter and its value as the flags that give it: `--atol logits=0.0001`,
    `--input-shape ids:1x128`, `--dynamic batch,seq` (cf. unfold.errors.python_spelling)."""
    if parameter in NEGATED and value in (NO_VALUE, False):
        return NEGATED[parameter]
    flag = FLAGS.get(parameter, "--" + parameter.replace("_", "-"))
    if value is NO_VALUE or value is True:
        return flag
    if isinstance(value, Mapping) and parameter in BY_NAME:  # (a position keys no name)
        return " ".join(f"{flag} " + shlex.quote(
            (f"{key}{BY_NAME[parameter]}" if isinstance(key, str) else "")
            + _text(item, parameter)) for key, item in value.items())
    repeated = parameter in REPEATED or (parameter == "inputs.shapes"
                                         and not is_one_shape(value))
    if repeated and isinstance(value, Sequence) and not isinstance(value, str):
        return " ".join(f"{flag} {shlex.quote(_text(item, parameter))}" for item in value)
    return f"{flag} {shlex.quote(_text(value, parameter))}"


def run_command(name: str, body: Callable[[], ExitCode], debug: bool) -> None:
    """Run a command's `body`: its messages name the flags, a user error is one line and
    its exit code, then the status line."""
    start = time.perf_counter()
    try:
        with spelled_as(cli_spelling):
            code = body()
    except UnfoldError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    status = "PASSED" if code == ExitCode.OK else "FAILED"
    print(f"{status} | {time.perf_counter() - start:.2f}s | unfold {name}", file=sys.stderr)
    raise typer.Exit(int(code))
