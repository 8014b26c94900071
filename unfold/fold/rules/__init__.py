"""One module per fold rule, each opening with its algebra. `RULES` is the registry the driver
(and later the CLI's `unfold rules` / `--skip`) follows, in order."""

from __future__ import annotations

from unfold.fold.rules import consumer_linear

RULES = {consumer_linear.NAME: consumer_linear}

__all__ = ["RULES"]
