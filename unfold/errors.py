"""Errors the user can fix, and the exit codes of DESIGN.md. Anything else is a bug."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # the check ran and failed (mismatch, --strict with norms left)
    BAD_INPUT = 2  # bad usage or bad input
    ENGINE_MISSING = 3  # no TensorRT, no GPU


class UnfoldError(Exception):
    """A problem with what the user gave: the message says what was given and what is valid."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
