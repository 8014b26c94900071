"""`unfold rules`: the fold's registry. First by op: the one handler each op has, the sub-rules
it may use forward, and what it does backward; then the sub-rules: what `--skip` takes, what
kind of step each is, its ops and its one-line algebra."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cli._common import DEBUG, JSON, run_command, show, stdout
from unfold.errors import ExitCode
from unfold.fold.transfer import HANDLERS, RULES, rule_ops

KINDS = {"sink": "absorbs it", "transfer": "carries it on", "backward": "into producers"}


def registry() -> dict[str, Any]:
    ops = [{"op": op if not domain else f"{domain}:{op}", "handler": handler.family,
            "rules": [rule.name for rule in handler.rules_of(op)],
            "backward": handler.backward.get(op, "")}
           for (domain, op), handler in sorted(HANDLERS.items())]
    rules = [{"rule": r.name, "kind": r.kind, "ops": rule_ops(r.name), "algebra": r.algebra}
             for r in RULES.values()]
    return {"ops": ops, "rules": rules}


def _render(found: dict[str, Any]) -> None:
    by_op = Table(title="handlers, by op")
    for column in ("op", "handler", "sub-rules (--skip)", "backward"):
        by_op.add_column(column)
    for row in found["ops"]:
        by_op.add_row(row["op"], row["handler"], ", ".join(row["rules"]),
                      row["backward"] or "-")
    stdout.print(by_op)
    rules = Table(title="sub-rules")
    for column in ("rule (--skip)", "kind", "ops", "algebra"):
        rules.add_column(column)
    for row in found["rules"]:
        rules.add_row(row["rule"], KINDS[row["kind"]], ", ".join(row["ops"]), row["algebra"])
    stdout.print(rules)


def rules(
    as_json: bool = JSON,
    debug: bool = DEBUG,
) -> None:
    """List the fold's handlers by op, and its sub-rules with their algebra."""

    def body() -> ExitCode:
        show(registry(), as_json, _render)
        return ExitCode.OK

    run_command("rules", body, debug)
