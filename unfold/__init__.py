"""unfold: fold offline normalizations out of Transformers at deployment.

This top-level module stays light on purpose: `import unfold.nn` (the training-time layers)
must load nothing but torch, so nothing here imports onnx, onnxruntime or the CLI.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
