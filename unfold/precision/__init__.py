"""A model's numeric precision, in the graph itself (TensorRT 11 builds strongly typed networks
only: what each tensor is stored and computed in is what the ONNX graph says).

* `ranges`: which weights fp16 cannot hold as they are (past 65504, below its smallest
  normal), before anything is converted or built.
* `half`: an fp32 graph converted to fp16 or bf16, weights and compute, with the model's
  inputs and outputs kept in their declared types (Casts at the edges), and the nodes that must
  stay fp32 for range kept so, each with its reason.
* `int8`: a static Q/DQ (QuantizeLinear/DequantizeLinear) model from calibration inputs.

onnx and numpy (ONNX Runtime where a graph is run to measure it); no torch, no TensorRT.
"""

# the half types a graph converts to (`unfold fold/convert/build --precision`); here, where
# importing it loads neither onnx nor numpy (the CLI's --help does)
PRECISIONS = ("fp16", "bf16")
