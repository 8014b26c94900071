"""The ONNX graph rewriter that folds offline normalizations (DESIGN.md, "The folding algebra").

    folded, report = unfold.fold.fold_model(onnx_model)

Imports onnx, onnx-graphsurgeon and numpy only, never torch. So far one rule is registered
(`rules/consumer_linear.py`, rule 1); `algebra.py` holds the maths of all of them.
"""

from unfold.fold.model import fold_model
from unfold.fold.report import FoldReport, SiteReport

__all__ = ["FoldReport", "SiteReport", "fold_model"]
