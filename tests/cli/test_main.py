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
