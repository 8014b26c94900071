"""One module per fold rule, each opening with its algebra. `RULES` is the registry the driver
(and later the CLI's `unfold rules` / `--skip`) follows, in order: a rule's `apply(site, graph,
names, report)` returns an `Outcome`."""

from __future__ import annotations

from unfold.fold.rules import (
    concat,
    consumer_conv,
    consumer_linear,
    embedding,
    pass_through,
    pending_shift,
    producer,
    residual_add,
)
from unfold.fold.rules._outcome import Outcome

# producer first: when it applies, the norm goes without any reader being rewired
# pending-shift after the single-reader rules: it handles a shift with several readers
# embedding last: only where nothing else takes the norm (see its module)
RULES = {rule.NAME: rule for rule in (producer, consumer_linear, consumer_conv, pass_through,
                                      concat, residual_add, pending_shift, embedding)}

__all__ = ["RULES", "Outcome"]
