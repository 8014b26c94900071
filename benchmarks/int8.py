"""INT8, where deployers feel LayerNorm (issue 11, issue 21): `ln`, `un-folded` and `none`
(benchmarks/suite.py builds them) quantized the two ways CPU deployers do and timed by
`unfold.bench` the same way as the fp32 suite, as ratios to `none`-int8 on the same engine:

* ONNX Runtime: its static quantization (`unfold.precision.int8.quantize_qdq`, what `unfold
  quantize` writes: QDQ, per-channel int8 weights, int8 activations, symmetric, as TensorRT's
  explicit quantization takes it), MinMax-calibrated;
* OpenVINO: NNCF's post-training quantization of the ONNX model (`ModelType.TRANSFORMER`: its
  SmoothQuant and bias correction; standard QuantizeLinear/DequantizeLinear that OpenVINO's
  CPU plugin runs in int8).

Both calibrate on the model's own example inputs (random batches from its input specs), and
each INT8 model is checked against its fp32 model (relative error, cosine). On the shipped
digits models, the test-set accuracy of `ln` and `un` (folded) in fp32 and in INT8, both ways,
calibrated on the test images themselves.

    python benchmarks/int8.py                                    # every shape (about 40 min)
    python benchmarks/int8.py --shapes deit_tiny --rounds 20 10 --engines openvino
    python benchmarks/int8.py --digits-only

A LayerNorm stays float between the quantized MatMuls (Q/DQ around it; OpenVINO keeps it an
fp32 MVN); a folded norm leaves nothing between them, so `un-folded`-int8 should run as
`none`-int8. For ONNX Runtime that is checked before timing: after its own graph optimizations
(the QDQ fusions, which depend on the calibrated parameters) the two quantized models have the
same op counts. Needs the `bench` extra (`pip install -c constraints.txt -e ".[bench]"`, which
brings NNCF).
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


ENGINES = ("ort", "openvino")


def quantize(source: Path, out: Path, feeds: list[dict[str, np.ndarray]],
             engine: str = "ort") -> Path:
    """`source` in INT8 for `engine`: ONNX Runtime's QDQ (unfold's), or NNCF's for OpenVINO."""
    if engine == "ort":
        from unfold.precision.int8 import quantize_qdq

        return quantize_qdq(source, out, feeds)
    import nncf
    import onnx

    quantized = nncf.quantize(onnx.load(str(source)), nncf.Dataset(feeds),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    onnx.save(quantized, str(out))
    return out


def openvino_fp32_norms(path: Path) -> int:
    """How many MVN (LayerNorm) ops OpenVINO's CPU plugin runs for `path`, as compiled."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 2})
    return sum(op.get_rt_info()["layerType"].astype(str) == "MVN"
               for op in compiled.get_runtime_model().get_ops())


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


def _agreement(fp32: Path, int8: Path, feeds: list[dict], engine: str = "ort"
               ) -> dict[str, float]:
    """The first output's largest error (of its scale) and cosine, INT8 against fp32."""
    from unfold.engines import runner_for
    from unfold.onnx_files import load_onnx
    from unfold.precision.int8 import agreement

    first = agreement(runner_for(load_onnx(fp32), engine, threads=2),
                      runner_for(load_onnx(int8), engine, threads=2), feeds)[0]
    return {"error_rel": first.relative, "cosine": first.cosine}


def digits(folder: Path, engines: tuple[str, ...]) -> list[dict]:
    """Test-set accuracy of the shipped digits models, fp32 and INT8 on each engine, calibrated
    on the test images (`unfold quantize --calibrate` with the data itself)."""
    import unfold
    from sample_models.data import DATA_DIR
    from sample_models.registry import CHECKPOINT_DIR
    from unfold.engines import runner_for
    from unfold.onnx_files import load_onnx

    data = np.load(DATA_DIR / "digits_test.npz")
    calibration = [{"images": data["images"][i:i + 16]} for i in range(0, len(data["images"]),
                                                                        16)]
    rows = []
    for norm in ("ln", "un"):
        fp32 = folder / f"digits-{norm}.onnx"
        report = unfold.convert(CHECKPOINT_DIR / f"digits-vit-{norm}.pt2", fp32, force=True)
        assert report, report.outcome
        for engine in engines:
            int8 = quantize(fp32, folder / f"digits-{norm}-{engine}-int8.onnx", calibration,
                            engine)
            for precision, path in (("fp32", fp32), ("int8", int8)):
                runner = runner_for(load_onnx(path), engine, threads=2)
                logits = runner.run({"images": data["images"]})[runner.output_names[0]]
                accuracy = float((logits.argmax(1) == data["labels"]).mean())
                rows.append({"model": f"digits-vit-{norm}{' (folded)' if norm == 'un' else ''}",
                             "engine": engine, "precision": precision, "accuracy": accuracy,
                             "test_images": int(len(data["labels"]))})
    return rows


def main() -> None:
    from suite import SHAPES, _inputs, export_variants

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", nargs="+", type=int, default=[40, 20])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--digits-only", action="store_true")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    from unfold.bench import bench

    started = time.perf_counter()
    engines = tuple(options.engines)
    result: dict = {"shapes": [], "digits": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("[int8] digits accuracy ...", file=sys.stderr, flush=True)
        result["digits"] = digits(folder, engines)
        for shape in [] if options.digits_only else options.shapes:
            print(f"[int8] {shape}: export ...", file=sys.stderr, flush=True)
            fp32 = export_variants(shape, folder)
            inputs = _inputs(shape)
            calibration = _feeds(fp32["none"], inputs, 1, CALIBRATION_BATCHES, seed=1)
            check = _feeds(fp32["none"], inputs, 1, 4, seed=2)
            for engine in engines:
                print(f"[int8] {shape}: quantize for {engine} ...", file=sys.stderr, flush=True)
                paths, agreement = {}, {}
                for variant in ("ln", "un-folded", "none"):
                    paths[f"{variant}-int8"] = quantize(
                        fp32[variant], folder / f"{shape}-{variant}-int8.onnx", calibration,
                        engine)
                    agreement[variant] = _agreement(fp32[variant], paths[f"{variant}-int8"],
                                                    check, engine)
                extra: dict = {}
                if engine == "ort":
                    folded_ops = optimized_op_counts(paths["un-folded-int8"])
                    if folded_ops != optimized_op_counts(paths["none-int8"]):
                        sys.exit(f"{shape}: un-folded-int8 and none-int8 differ after ONNX "
                                 f"Runtime's optimizations; not like for like")
                    extra["ops_after_ort_optimizations"] = sum(folded_ops.values())
                else:
                    extra["ln_int8_fp32_mvn"] = openvino_fp32_norms(paths["ln-int8"])
                    extra["un_folded_int8_fp32_mvn"] = openvino_fp32_norms(
                        paths["un-folded-int8"])
                paths["none-fp32"] = fp32["none"]
                for batch, rounds in zip(options.batches, options.rounds, strict=True):
                    print(f"[int8] {shape} {engine} batch {batch}: {rounds} rounds ...",
                          file=sys.stderr, flush=True)
                    report = bench(list(paths.values()), engine=engine, batches=(batch,),
                                   threads=options.threads, rounds=rounds, warmup=3,
                                   baseline=f"{shape}-none-int8", inputs=inputs, memory=False)
                    cells = {r.model.removeprefix(f"{shape}-"): r for r in report.results}
                    result["shapes"].append({
                        "shape": shape, "engine": engine, "batch": batch, "rounds": rounds,
                        "none_int8_ms": cells["none-int8"].latency.median * 1e3,
                        "none_fp32_ms": cells["none"].latency.median * 1e3,
                        "ratios": {k: r.ratio.__dict__ for k, r in cells.items() if r.ratio},
                        "agreement_with_fp32": agreement, "runtime": report.runtime,
                        "cpu": report.environment["cpu"], **extra})
    _print(result, options)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=1))
        print(f"written {options.json}", file=sys.stderr)


def _ratio(r: dict) -> str:
    return f"{r['median']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def _print(result: dict, options: argparse.Namespace) -> None:
    print("digits test-set accuracy (360 images; INT8 calibrated on them):")
    for row in result["digits"]:
        print(f"  {row['model']} {row['engine']} {row['precision']}: {row['accuracy']:.4f}")
    if not result["shapes"]:
        return
    print(f"INT8, {options.threads} threads, {result['shapes'][0]['cpu']}; per-round ratio to "
          f"none-int8 on the same engine (median [95%])")
    print("engine | shape | batch | none-int8 ms | ln-int8 | un-folded-int8 | none fp32 | "
          "int8 vs fp32 max rel err (ln / un-folded / none)")
    for row in result["shapes"]:
        r, a = row["ratios"], row["agreement_with_fp32"]
        errors = " / ".join(f"{a[v]['error_rel']:.3f}" for v in ("ln", "un-folded", "none"))
        print(f"{row['engine']} | {row['shape']} | {row['batch']} | {row['none_int8_ms']:.2f} | "
              f"{_ratio(r['ln-int8'])} | {_ratio(r['un-folded-int8'])} | {_ratio(r['none'])} | "
              f"{errors}")


if __name__ == "__main__":
    main()
