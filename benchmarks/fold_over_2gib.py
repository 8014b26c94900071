"""A model over protobuf's 2 GiB limit, folded as `unfold fold` does: it must be read with its
external data, folded, and written with external data again, and compute what it computed.

    python benchmarks/fold_over_2gib.py [--blocks 34] [--width 4096]

The model is made here, not exported (an export of this size needs a torch model of this
size): `blocks` pre-norm blocks x -> UnifiedNorm-style Mul/Add -> MatMul (width x width,
fp32) -> + bias -> + x, then a final norm and a head. 34 blocks of width 4096 make 2.1 GiB.
The fold runs in a fresh process (`fold_time.py --fold-child`: load, fold, write) so its peak
memory is its own; then ONNX Runtime runs both files on one batch and the outputs are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unfold.fold import ModelParts  # noqa: E402
from unfold.onnx_files import save_onnx_atomic  # noqa: E402


def build(blocks: int, width: int, seed: int = 0) -> ModelParts:
    """The model as parts: its weights numpy arrays, written one at a time."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], {}
    x = "x"
    for i in range(blocks + 1):
        weights[f"n{i}.scale"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
        weights[f"n{i}.shift"] = rng.normal(0, 0.1, width).astype(np.float32)
        nodes += [helper.make_node("Mul", [x, f"n{i}.scale"], [f"s{i}"], name=f"n{i}_mul"),
                  helper.make_node("Add", [f"s{i}", f"n{i}.shift"], [f"z{i}"], name=f"n{i}_add")]
        if i == blocks:  # the final norm and the head
            weights["head.weight"] = rng.normal(0, width ** -0.5, (width, 10)).astype(np.float32)
            nodes.append(helper.make_node("MatMul", [f"z{i}", "head.weight"], ["y"], name="head"))
            break
        weights[f"fc{i}.weight"] = rng.normal(0, width ** -0.5, (width, width)).astype(np.float32)
        weights[f"fc{i}.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
        nodes += [helper.make_node("MatMul", [f"z{i}", f"fc{i}.weight"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"m{i}", f"fc{i}.bias"], [f"f{i}"]),
                  helper.make_node("Add", [x, f"f{i}"], [f"r{i}"], name=f"residual{i}")]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "over_2gib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])])
    skeleton = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    skeleton.ir_version = 8
    return ModelParts(skeleton, weights)


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=34)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "over_2gib.onnx"
        start = time.perf_counter()
        save_onnx_atomic(build(args.blocks, args.width), path)
        data = path.with_name(path.name + ".data")
        weights_mib = (data.stat().st_size if data.exists() else path.stat().st_size) / 2**20
        print(f"built {path.name}: {path.stat().st_size / 2**20:.1f} MiB + "
              f"{weights_mib:.0f} MiB external data in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        child = subprocess.run([sys.executable, str(Path(__file__).with_name("fold_time.py")),
                                "--fold-child", str(path)], capture_output=True, text=True,
                               check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        folded = path.with_name("over_2gib-folded.onnx")
        folded_data = folded.with_name(folded.name + ".data")
        stored = onnx.load(str(folded), load_external_data=False)
        external = sum(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
        ops = sorted({n.op_type for n in stored.graph.node})
        x = np.random.default_rng(1).normal(size=(4, args.width)).astype(np.float32)
        expected, got = run(path, x), run(folded, x)
        error = float(np.abs(expected - got).max() / np.abs(expected).max())
        print(json.dumps({
            "weights_mib": round(weights_mib), "load_s": round(result["load_s"], 1),
            "fold_s": round(result["fold_s"], 1), "write_s": round(result["write_s"], 1),
            "peak_over_weights": round((result["peak_rss_mib"] - result["base_mib"])
                                       / weights_mib, 2),
            "sites": result["sites"], "folded": result["folded"],
            "folded_data_mib": round(folded_data.stat().st_size / 2**20)
            if folded_data.exists() else None,
            "external_initializers": external, "ops_after": ops,
            "max_abs_error_over_output_scale": error}))
        if data.exists() != folded_data.exists() or error > 1e-5 or result["left"]:
            sys.exit("the fold over 2 GiB did not come out right")


if __name__ == "__main__":
    main()
