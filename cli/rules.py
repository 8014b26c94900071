"""`unfold rules`: the fold's registry, one row per transfer function and sink: what `--skip`
takes, what kind of step it is, the ops it knows, and its one-line algebra."""

from __future__ import annotations

from rich.table import Table

from cli._common import DEBUG, JSON, run_command, show, stdout
from unfold.errors import ExitCode
from unfold.fold.transfer import RULES

KINDS = {"sink": "absorbs it", "transfer": "carries it on", "backward": "into producers"}


def _render(rows: list[dict]) -> None:
    table = Table()
    for column in ("rule (--skip)", "kind", "ops", "algebra"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["rule"], KINDS[row["kind"]], ", ".join(row["ops"]), row["algebra"])
    stdout.print(table)


def rules(
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """List the fold's transfer functions and sinks with their algebra."""

    def body() -> ExitCode:
        rows = [{"rule": r.name, "kind": r.kind, "ops": sorted(r.ops), "algebra": r.algebra}
                for r in RULES.values()]
        show(rows, as_json, _render)
        return ExitCode.OK

    run_command("rules", body, debug)
