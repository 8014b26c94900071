"""What a fold did: per norm site, where it went or why it stayed; op counts before/after."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from unfold.fold.online import OnlineNorm
from unfold.numerics import FP16_MAX

if TYPE_CHECKING:
    import onnx



def torch_module(node: onnx.NodeProto) -> str | None:
    """The torch module an exported node came from, where the exporter recorded it: the
    dynamo exporter in the node's metadata (`pkg.torch.onnx.name_scopes`: `['', 'blocks.3',
    'blocks.3.norm1', 'mul_21']`), the TorchScript exporter in its name
    (`/blocks.3/norm1/Mul`). None for the top-level module, or a graph from elsewhere."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes[:-1] if isinstance(s, str) and s]
            return modules[-1] if modules else None
    parts = node.name.split("/")
    if node.name.startswith("/") and len(parts) > 2 and all(parts[1:-1]):
        return ".".join(parts[1:-1])
    return None


@dataclass
class SiteReport:
    name: str  # the ONNX node the site starts at
    kind: str
    channels: int
    # "folded": gone; "materialized": a pending affine left as one Mul/Add at a graph output
    # (allowed); "partial": some readers took it; "stayed": none did; "kept": a per-channel
    # scale that is no norm (LayerScale) left as the one Mul it was
    status: str = "stayed"
    absorbed_by: list[str] = field(default_factory=list)  # nodes that took the affine
    reasons: list[str] = field(default_factory=list)  # why (part of) it stayed
    path: list[str] = field(default_factory=list)  # where it was moved on the way
    merged_into: str | None = None  # composed with this (earlier) site on the residual stream
    max_abs_weight_before: float = 0.0
    max_abs_weight_after: float = 0.0
    # min and max |scale| the site's affine had while it was carried (a post-norm stream's is
    # the product of every norm's so far: dividing weights by it grows them by 1/min)
    scale_range: list[float] | None = None
    module: str | None = None  # the torch module it was exported from, where recorded
    # layout ops that existed only around this norm (they compose to the identity) and
    # outlived it: the site is not gone while they stay
    layout_left: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How a person knows it: its torch module (blocks.3.norm1), else its node's name."""
        return self.module or self.name


@dataclass
class FoldReport:
    sites: list[SiteReport]  # the offline norm sites
    ops_before: Counter[str]
    ops_after: Counter[str]
    online: list[OnlineNorm] = field(default_factory=list)  # never folded, reported
    # what the fold did not reach (coverage.py): a quantized or bfloat16 model, norms inside
    # subgraphs or model-local functions; each a sentence
    unreached: list[str] = field(default_factory=list)
    # where the rewrite, given the inputs the decision planned with, planned another way (what
    # the decision could not see of the graph as rewritten); each a sentence, none expected
    replanned: list[str] = field(default_factory=list)

    @property
    def folded(self) -> list[SiteReport]:
        return [s for s in self.sites if s.status in ("folded", "materialized")]

    @property
    def left(self) -> list[SiteReport]:
        return [s for s in self.sites if s.status not in ("folded", "materialized", "kept")]

    @property
    def kept(self) -> list[SiteReport]:
        return [s for s in self.sites if s.status == "kept"]

    def fp16_overflows(self) -> list[SiteReport]:
        """Sites whose folded weights an fp16 engine cannot hold."""
        return [s for s in self.sites if s.max_abs_weight_after > FP16_MAX]

    def __bool__(self) -> bool:
        """True when no normalization is left (a materialized pending affine is allowed)."""
        return not self.left and not self.online and not self.unreached

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": [asdict(s) for s in self.sites],
            "online": [asdict(o) for o in self.online],
            "unreached": list(self.unreached),
            "replanned": list(self.replanned),
            "ops_before": dict(sorted(self.ops_before.items())),
            "ops_after": dict(sorted(self.ops_after.items())),
            "folded": len(self.folded), "left": len(self.left), "kept": len(self.kept),
            "no_norm_left": bool(self),
        }
