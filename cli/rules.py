"""`unfold rules`: the fold's registry, one row per transfer function and sink: what `--skip`
takes, what kind of step it is, the ops it knows, and its one-line algebra."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cli._common import run_command, stdout
from unfold.errors import ExitCode
from unfold.fold.transfer import RULES

KINDS = {"sink": "absorbs it", "transfer": "carries it on", "backward": "into producers"}


def rules(
    as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """List the fold's transfer functions and sinks with their algebra."""

    def body() -> ExitCode:
        if as_json:
            stdout.print_json(json.dumps([
                {"rule": r.name, "kind": r.kind, "ops": sorted(r.ops), "algebra": r.algebra}
                for r in RULES.values()]))
            return ExitCode.OK
        table = Table()
        for column in ("rule (--skip)", "kind", "ops", "algebra"):
            table.add_column(column)
        for rule in RULES.values():
            table.add_row(rule.name, KINDS[rule.kind], ", ".join(sorted(rule.ops)),
                          rule.algebra)
        stdout.print(table)
        return ExitCode.OK

    run_command("rules", body, debug)
