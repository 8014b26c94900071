"""Tests that need an optional extra (`hf`, `zoo`) skip, with the reason, where it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def import_or_skip(name: str) -> ModuleType:
    """importorskip that also skips (with the reason) when the package is installed but broken,
    e.g. timm with a torchvision built for another torch."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to skip
        pytest.skip(f"{name} is not importable here ({type(exc).__name__}: {exc}); "
                    f"install the `zoo` extra on a machine where it works")
