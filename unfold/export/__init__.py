"""torch -> ONNX: torch.onnx's dynamo exporter by default, the TorchScript exporter as a
fallback (or on request); the result says which ran and why.

    exported = unfold.export.export_onnx(loaded, specs)          # specs: unfold.inputs
    exported.model, exported.exporter, exported.fallback_reason

A `torch.export` program (`.pt2`) is exported as it is, with its own dynamic dimensions; other
models are exported at the specs' shapes, with the specs' dynamic axes. The exporters' own
chatter (prints, warnings, log lines) is kept off stdout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unfold.export.exporter import Exported, example_feeds, export_onnx

# the choices of --exporter; this package imports torch only when an export is asked for
EXPORTERS = ("auto", "dynamo", "torchscript")

__all__ = ["EXPORTERS", "Exported", "example_feeds", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in ("Exported", "example_feeds", "export_onnx"):
        from unfold.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'unfold.export' has no attribute {name!r}")
