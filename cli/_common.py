"""What every command shares: the --json and --debug options, results on stdout (a table, or
JSON with --json), user errors as `error: ...` and an exit code (a traceback only with
--debug), a status line on stderr."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import typer
from rich.console import Console

from unfold.errors import ExitCode, UnfoldError

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


def run_command(name: str, body: Callable[[], ExitCode], debug: bool) -> None:
    start = time.perf_counter()
    try:
        code = body()
    except UnfoldError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    status = "PASSED" if code == ExitCode.OK else "FAILED"
    print(f"{status} | {time.perf_counter() - start:.2f}s | unfold {name}", file=sys.stderr)
    raise typer.Exit(int(code))
