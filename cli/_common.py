"""What every command shares: user errors as `error: ...` and an exit code (a traceback only
with --debug), results on stdout, a status line on stderr."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

import typer
from rich.console import Console

from unfold.errors import ExitCode, UnfoldError

# Plain lines never wrap (paths stay whole, greppable); tables still fit the terminal.
# No markup or highlighting: file names with [brackets] print as given.
stdout = Console(soft_wrap=True, markup=False, highlight=False)


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
