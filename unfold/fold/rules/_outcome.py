from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs


@dataclass
class Outcome:
    """What a rule did to a site: `gone` from where it was; `moved_to` the nodes that now carry
    it when it was moved rather than folded (the driver looks at them again)."""

    gone: bool = False
    moved_to: list[gs.Node] = field(default_factory=list)
    left: str | None = None  # gone, but only its exact part: why something of it stays
