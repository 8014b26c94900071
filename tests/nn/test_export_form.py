"""In eval mode the offline norms export as ONE Mul and ONE Add of constants per layer (what
`unfold.fold` will take apart), with either torch.onnx exporter, and ONNX Runtime agrees.
Channels first (channel_axis=1, (N, C, H, W) input) the constants are shaped (C, 1, 1) (or
(1, C, 1, 1)) and there is no Transpose."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from unfold.nn import PowerNorm, UnifiedNorm

LAYERS = {
    "un": lambda axis: UnifiedNorm(8, channel_axis=axis),
    "pn*": lambda axis: PowerNorm(8, group_scaling=False, channel_axis=axis),
}
# channel axis -> (input shape, the constant shapes allowed)
LAYOUTS = {
    "channels_last": (-1, (2, 5, 8), {(8,)}),
    "channels_first": (1, (2, 8, 3, 4), {(8, 1, 1), (1, 8, 1, 1)}),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_eval_export_is_one_mul_and_one_add_of_constants(kind: str, layout: str,
                                                         dynamo: bool) -> None:
    torch.manual_seed(0)
    axis, shape, constant_shapes = LAYOUTS[layout]
    norm = LAYERS[kind](axis)
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias, *norm.buffers()):
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 2.0)
    norm.eval()
    x = torch.randn(shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(norm, (x,), buffer, dynamo=dynamo, input_names=["x"],
                          output_names=["y"])
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)

    ops = Counter(node.op_type for node in model.graph.node)
    assert ops == {"Mul": 1, "Add": 1}, f"{kind} {layout} exported as {dict(ops)}"
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        for name in node.input:
            if node.op_type == "Constant":
                continue
            if name in constants:
                assert constants[name].shape in constant_shapes, \
                    f"{node.op_type} constant {name} shaped {constants[name].shape}"
    scale, shift = (t.detach().numpy() for t in norm.eval_affine())
    vectors = [v.reshape(-1) for v in constants.values()]
    assert any(np.allclose(v, scale, rtol=1e-6, atol=0) for v in vectors), \
        "the Mul's constant should be γ/sqrt(ρ+eps), computed at export"
    assert any(np.allclose(v, shift, rtol=0, atol=0) for v in vectors)

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y_ort,) = session.run(None, {"x": x.numpy()})
    y_torch = norm(x).detach().numpy()
    np.testing.assert_allclose(y_ort, y_torch, rtol=1e-6, atol=1e-6)
    if axis == 1:
        y_moved = LAYERS[kind](-1)
        y_moved.load_state_dict(norm.state_dict())
        expected = y_moved.eval()(x.movedim(1, -1)).movedim(-1, 1).detach().numpy()
        np.testing.assert_allclose(y_ort, expected, rtol=1e-6, atol=1e-6)
