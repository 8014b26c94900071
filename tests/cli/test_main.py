"""The `unfold` console script: --version and --help, through the installed entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import unfold
from cli.app import app


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"unfold {unfold.__version__}"


def test_help_describes_the_tool() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "offline normalizations" in result.output


def test_unknown_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["--frobnicate"])
    assert result.exit_code == 2


def test_installed_console_script() -> None:
    exe = shutil.which("unfold", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the `unfold` console script is not installed next to this interpreter; "
                    "install the package (pip install -e .) as the README says")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unfold {unfold.__version__}"


_IMPORTED = """
import atexit, sys
atexit.register(lambda: print("IMPORTED", *sorted(m for m in ("torch", "onnx", "onnxruntime")
                                                   if m in sys.modules), file=sys.stderr))
sys.argv = ["unfold", *sys.argv[1:]]
from cli.main import run
run()
"""


def _imported(*args: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _IMPORTED, *args], capture_output=True,
                          text=True, cwd=__import__("pathlib").Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("IMPORTED"))
    return set(line.split()[1:])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["rules"], ["rules", "--json"],
                                  ["fold", "--help"], ["convert", "--help"]])
def test_help_and_rules_import_neither_torch_nor_onnx(args: list[str]) -> None:
    """(torch and onnx cost seconds of start-up: benchmarks/startup.py)"""
    assert _imported(*args) == set()


def test_fold_imports_no_torch(tmp_path) -> None:
    import onnx

    from tests.fold.helpers import post_norm_stack

    onnx.save(post_norm_stack(2, 8), tmp_path / "m.onnx")
    assert "torch" not in _imported("fold", str(tmp_path / "m.onnx"), "--out",
                                    str(tmp_path / "f.onnx"))
    assert "torch" not in _imported("inspect", str(tmp_path / "m.onnx"))


def test_piped_tables_keep_one_row_per_line() -> None:
    """rich lays tables out for 80 columns when stdout is no terminal: a pipe or a file must
    still get one row per line (grep, awk)."""
    from unfold.fold.transfer import RULES

    done = subprocess.run([sys.executable, "-m", "cli", "rules"], capture_output=True,
                          text=True, cwd=__import__("pathlib").Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    for rule in RULES.values():
        (row,) = [line for line in done.stdout.splitlines()
                  if line.split("│")[1:2] and line.split("│")[1].strip() == rule.name]
        assert rule.algebra in row, (rule.name, row)
