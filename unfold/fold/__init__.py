"""The ONNX graph rewriter that folds offline normalizations (DESIGN.md, "The folding algebra").

    folded, report = unfold.fold.fold_model(onnx_model)
    folded_parts, report = unfold.fold.fold_parts(unfold.onnx_files.load_onnx_parts(path))

Imports onnx, onnx-graphsurgeon and numpy only, never torch, and those only when a fold is
asked for: `transfer/` holds one module per op family with its ops' handler, forward and
backward (the registry, HANDLERS, one per op, and the sub-rules, RULES, in
`transfer/__init__.py`, which `unfold rules` lists without loading onnx); `dataflow.py` the
pass; `algebra.py` the maths of every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unfold.fold.model import fold_model, fold_parts
    from unfold.fold.report import FoldReport, SiteReport
    from unfold.model_parts import ModelParts

__all__ = ["FoldReport", "ModelParts", "SiteReport", "fold_model", "fold_parts"]
_HOMES = {"fold_model": "model", "fold_parts": "model", "FoldReport": "report",
          "SiteReport": "report", "ModelParts": "weights"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"unfold.fold.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'unfold.fold' has no attribute {name!r}")
