"""`unfold rules`: the registered fold rules, in the order they are tried, with their algebra."""

from __future__ import annotations

from rich.table import Table

from cli._common import stdout
from unfold.fold.rules import RULES


def rules() -> None:
    """List the fold rules with their one-line algebra."""
    table = Table()
    table.add_column("rule")
    table.add_column("algebra")
    for name, rule in RULES.items():
        table.add_row(name, rule.ALGEBRA)
    stdout.print(table)
