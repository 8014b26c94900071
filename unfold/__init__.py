"""unfold: fold offline normalizations out of Transformers at deployment.

    import unfold
    report = unfold.convert("model.pt2", "model.onnx")       # load, export, fold, verify, write
    report = unfold.verify("model.pt2", "model.onnx")        # the check on its own
    report = unfold.fold_file("model.onnx", "folded.onnx")  # fold an ONNX file, verify, write

This top-level module stays light on purpose: `import unfold.nn` (the training-time layers)
must load nothing but torch, so `convert` and `verify` (onnx, onnxruntime) load on first use.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["Inputs", "UnfoldError", "__version__", "convert", "fold_file", "verify"]


def __getattr__(name: str) -> Any:
    if name in ("convert", "verify"):
        from unfold import pipeline

        return getattr(pipeline, name)
    if name == "fold_file":
        from unfold.fold_files import fold_file

        return fold_file
    if name == "Inputs":
        from unfold.inputs import Inputs

        return Inputs
    if name == "UnfoldError":
        from unfold.errors import UnfoldError

        return UnfoldError
    raise AttributeError(f"module 'unfold' has no attribute {name!r}")
