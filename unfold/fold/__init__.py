"""The ONNX graph rewriter that folds offline normalizations (DESIGN.md, "The folding algebra").

    folded, report = unfold.fold.fold_model(onnx_model)
    folded_parts, report = unfold.fold.fold_parts(unfold.onnx_files.load_onnx_parts(path))

Imports onnx, onnx-graphsurgeon and numpy only, never torch. `rules/` holds one module per
rule (the registry, in order, in `rules/__init__.py`); `algebra.py` holds their maths.
"""

from unfold.fold.model import fold_model, fold_parts
from unfold.fold.report import FoldReport, SiteReport
from unfold.fold.weights import ModelParts

__all__ = ["FoldReport", "ModelParts", "SiteReport", "fold_model", "fold_parts"]
