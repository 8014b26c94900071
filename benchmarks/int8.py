"""INT8, where deployers feel LayerNorm (issue 11): ONNX Runtime static quantization (QDQ,
int8 weights per channel and int8 activations, MinMax calibration on the model's own example
inputs: random batches from its input specs) of `ln`, `un-folded` and `none`, timed by
`unfold.bench` the same way as the fp32 suite (benchmarks/suite.py builds the variants), and
checked against each variant's fp32 model (relative error, cosine). On the shipped digits
models, the test-set accuracy of `ln` and `un` (folded) in fp32 and in INT8.

    python benchmarks/int8.py                                    # every shape (about 20 min)
    python benchmarks/int8.py --shapes deit_tiny --rounds 20 10 --digits-only

A LayerNorm stays float between the quantized MatMuls (Q/DQ around it); a folded norm leaves
nothing between them, so `un-folded`-int8 should run as `none`-int8. Before timing, that is
checked: after ONNX Runtime's own graph optimizations (the QDQ fusions, which depend on the
calibrated parameters) the two quantized models have the same op counts. Needs the `bench`
extra (`pip install -c constraints.txt -e ".[bench]"`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # suite.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CALIBRATION_BATCHES = 8


def quantize(source: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.left, None)

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    prepared.unlink()
    return out


def optimized_op_counts(path: Path) -> dict[str, int]:
    """The ops ONNX Runtime runs for `path` after its graph optimizations (QLinearMatMul where
    it fused a DequantizeLinear-MatMul-QuantizeLinear group, ...)."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # (its warning that the result is machine-specific)
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def _feeds(path: Path, inputs, batch: int, count: int, seed: int) -> list[dict]:  # noqa: ANN001
    import onnx

    from unfold.inputs import onnx_input_specs, random_batch

    specs = onnx_input_specs(onnx.load(str(path), load_external_data=False), inputs,
                             batch=batch)
    rng = np.random.default_rng(seed)
    return [random_batch(specs, rng) for _ in range(count)]


def _agreement(fp32: Path, int8: Path, feeds: list[dict]) -> dict[str, float]:
    from unfold.engines.ort import OrtRunner

    a, b = OrtRunner(fp32, threads=2), OrtRunner(int8, threads=2)
    want = np.concatenate([a.run(f)[a.output_names[0]].reshape(len(next(iter(f.values()))), -1)
                           for f in feeds])
    got = np.concatenate([b.run(f)[b.output_names[0]].reshape(len(next(iter(f.values()))), -1)
                          for f in feeds])
    cosine = float(np.sum(want * got) / (np.linalg.norm(want) * np.linalg.norm(got)))
    return {"error_rel": float(np.abs(got - want).max() / np.abs(want).max()), "cosine": cosine}


def digits(folder: Path) -> list[dict]:
    """Test-set accuracy of the shipped digits models, fp32 and INT8 (calibrated, as every
    model here, on random inputs from its input spec, not on test images)."""
    import unfold
    from sample_models.data import DATA_DIR
    from sample_models.registry import CHECKPOINT_DIR
    from unfold.engines.ort import OrtRunner

    data = np.load(DATA_DIR / "digits_test.npz")
    rows = []
    for norm in ("ln", "un"):
        fp32 = folder / f"digits-{norm}.onnx"
        report = unfold.convert(CHECKPOINT_DIR / f"digits-vit-{norm}.pt2", fp32, force=True)
        assert report, report.outcome
        calibration = [{"images": np.random.default_rng(i).random((32, 1, 8, 8),
                                                                    dtype=np.float32)}
                       for i in range(CALIBRATION_BATCHES)]
        int8 = quantize(fp32, folder / f"digits-{norm}-int8.onnx", calibration)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            logits = OrtRunner(path, threads=2).run({"images": data["images"]})["output"]
            accuracy = float((logits.argmax(1) == data["labels"]).mean())
            rows.append({"model": f"digits-vit-{norm}{' (folded)' if norm == 'un' else ''}",
                         "precision": precision, "accuracy": accuracy,
                         "test_images": int(len(data["labels"]))})
    return rows


def main() -> None:
    from suite import SHAPES, _inputs, export_variants

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", nargs="+", type=int, default=[40, 20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--digits-only", action="store_true")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    from unfold.bench import bench

    started = time.perf_counter()
    result: dict = {"shapes": [], "digits": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("[int8] digits accuracy ...", file=sys.stderr, flush=True)
        result["digits"] = digits(folder)
        for shape in [] if options.digits_only else options.shapes:
            print(f"[int8] {shape}: export and quantize ...", file=sys.stderr, flush=True)
            fp32 = export_variants(shape, folder)
            inputs = _inputs(shape)
            calibration = _feeds(fp32["none"], inputs, 1, CALIBRATION_BATCHES, seed=1)
            check = _feeds(fp32["none"], inputs, 1, 4, seed=2)
            paths, agreement = {}, {}
            for variant in ("ln", "un-folded", "none"):
                paths[f"{variant}-int8"] = quantize(fp32[variant],
                                                    folder / f"{shape}-{variant}-int8.onnx",
                                                    calibration)
                agreement[variant] = _agreement(fp32[variant], paths[f"{variant}-int8"], check)
            folded_ops = optimized_op_counts(paths["un-folded-int8"])
            if folded_ops != optimized_op_counts(paths["none-int8"]):
                sys.exit(f"{shape}: un-folded-int8 and none-int8 differ after ONNX Runtime's "
                         f"optimizations; the comparison would not be like for like")
            print(f"[int8] {shape}: un-folded-int8 runs none-int8's ops "
                  f"({sum(folded_ops.values())} after ONNX Runtime's optimizations)",
                  file=sys.stderr, flush=True)
            paths["none-fp32"] = fp32["none"]
            for batch, rounds in zip(options.batches, options.rounds, strict=True):
                print(f"[int8] {shape} batch {batch}: {rounds} rounds ...", file=sys.stderr,
                      flush=True)
                report = bench(list(paths.values()), engine="ort", batches=(batch,),
                               threads=options.threads, rounds=rounds, warmup=3,
                               baseline=f"{shape}-none-int8", inputs=inputs, memory=False)
                cells = {r.model.removeprefix(f"{shape}-"): r for r in report.results}
                result["shapes"].append({
                    "shape": shape, "batch": batch, "rounds": rounds,
                    "none_int8_ms": cells["none-int8"].latency.median * 1e3,
                    "none_fp32_ms": cells["none"].latency.median * 1e3,
                    "ratios": {k: r.ratio.__dict__ for k, r in cells.items() if r.ratio},
                    "agreement_with_fp32": agreement, "runtime": report.runtime,
                    "cpu": report.environment["cpu"]})
    _print(result, options)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=1))
        print(f"written {options.json}", file=sys.stderr)


def _ratio(r: dict) -> str:
    return f"{r['median']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _print(result: dict, options: argparse.Namespace) -> None:
    print("digits test-set accuracy (360 images):")
    for row in result["digits"]:
        print(f"  {row['model']} {row['precision']}: {row['accuracy']:.4f}")
    if not result["shapes"]:
        return
    print(f"INT8 (ONNX Runtime QDQ, per-channel int8), {options.threads} threads, "
          f"{result['shapes'][0]['cpu']}; per-round ratio to none-int8 (median [95%])")
    print("shape | batch | none-int8 ms | ln-int8 | un-folded-int8 | none fp32 | "
          "int8 vs fp32 max rel err (ln / un-folded / none)")
    for row in result["shapes"]:
        r, a = row["ratios"], row["agreement_with_fp32"]
        errors = " / ".join(f"{a[v]['error_rel']:.3f}" for v in ("ln", "un-folded", "none"))
        print(f"{row['shape']} | {row['batch']} | {row['none_int8_ms']:.2f} | "
              f"{_ratio(r['ln-int8'])} | {_ratio(r['un-folded-int8'])} | {_ratio(r['none'])} | "
              f"{errors}")


if __name__ == "__main__":
    main()
