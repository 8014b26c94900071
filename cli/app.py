"""The `unfold` typer app. Each command lives in its own module under cli/ and registers
itself on `app`; this module owns only the app and the global options. (`cli.main` is the
entry point: it installs the signal handling before this is imported.)"""

from __future__ import annotations

import typer

import unfold

app = typer.Typer(
    name="unfold",
    help=(
        "Fold offline normalizations (Unified Normalization, PowerNorm*, BatchNorm) out of "
        "Transformers exported to ONNX, verify the result against PyTorch, measure it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags as flags, no boxes to wrap when piped
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"unfold {unfold.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Fold offline normalizations out of Transformers; prove and measure the result."""


# one module per command
from cli.bench import bench  # noqa: E402
from cli.build import build  # noqa: E402
from cli.convert import convert  # noqa: E402
from cli.fold import fold  # noqa: E402
from cli.inspect import inspect  # noqa: E402
from cli.quantize import quantize  # noqa: E402
from cli.rules import rules  # noqa: E402
from cli.verify import verify  # noqa: E402

app.command("convert")(convert)
app.command("fold")(fold)
app.command("inspect")(inspect)
app.command("verify")(verify)
app.command("rules")(rules)
app.command("bench")(bench)
app.command("build")(build)
app.command("quantize")(quantize)
