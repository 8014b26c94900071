"""The CLI's tables are laid out for the terminal's width; tests read them at a fixed, wide one
so that a long checkout path (or a narrow CI terminal) does not wrap a header under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cli._common import stdout


@pytest.fixture(autouse=True)
def wide_terminal() -> Iterator[None]:
    before = stdout.width
    stdout.width = 200
    yield
    stdout.width = before
