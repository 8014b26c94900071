"""The ONNX graph rewriter that folds offline normalizations (DESIGN.md, "The folding algebra").

So far: `unfold.fold.algebra`, the numpy maths every fold rule uses. Imports onnx,
onnx-graphsurgeon and numpy only, never torch.
"""
