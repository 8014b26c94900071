"""What a fold did: per norm site, where it went or why it stayed; op counts before/after."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SiteReport:
    name: str
    kind: str
    channels: int
    # "folded": gone; "materialized": a pending affine left as one Mul/Add at a graph output
    # (allowed); "partial": some readers took it; "stayed": none did
    status: str = "stayed"
    absorbed_by: list[str] = field(default_factory=list)  # nodes that took the affine
    reasons: list[str] = field(default_factory=list)  # why (part of) it stayed
    path: list[str] = field(default_factory=list)  # where it was moved on the way
    merged_into: str | None = None  # composed with this (earlier) site on the residual stream
    max_abs_weight_before: float = 0.0
    max_abs_weight_after: float = 0.0


@dataclass
class FoldReport:
    sites: list[SiteReport]
    ops_before: Counter[str]
    ops_after: Counter[str]

    @property
    def folded(self) -> list[SiteReport]:
        return [s for s in self.sites if s.status in ("folded", "materialized")]

    @property
    def left(self) -> list[SiteReport]:
        return [s for s in self.sites if s.status not in ("folded", "materialized")]

    def __bool__(self) -> bool:
        """True when no normalization is left."""
        return not self.left
