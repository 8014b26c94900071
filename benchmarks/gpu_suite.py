"""The GPU figures (issue 11, BENCHMARKS.md "On a GPU"): `ln`, `un` (UnifiedNorm in eval, its
per-channel Mul/Add still there) and `none` (every norm an Identity) for ViT-S/16, Swin-T-like
and BERT-base-like at batch 1, 8 and 64, in PyTorch eager and compiled (torch.compile; with
`mode="reduce-overhead"` it captures CUDA graphs), timed with CUDA events in interleaved
rounds, with `torch.cuda.max_memory_allocated` per variant, device and versions in the JSON.

    python benchmarks/gpu_suite.py --json gpu.json              # on a CUDA machine, ~6 min
    python benchmarks/gpu_suite.py --device cpu --quick          # the same code on the CPU

Why `none` stands for `un-folded` here: a completed fold is exactly the no-norm twin's graph
(tests/zoo, benchmarks/suite.py check it op for op). This script checks that claim on the CPU
first, for each shape: the UN model exported and folded has `none`'s op counts, and folding
changes no output beyond fp32 rounding. Each (shape, batch, mode) compares its three variants
in one interleaved run; the headline ratios are `ln / none` (what the fold gains) and
`un / none` (what leaving UN unfolded costs).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sample_models, from a checkout

SHAPES = ("vit_small", "swin_tiny", "bert_base")
NORMS = ("ln", "un", "none")
SEQ = 128


def build(shape: str, norm: str) -> torch.nn.Module:
    from sample_models.bert import bert_base
    from sample_models.swin import swin_tiny_like
    from sample_models.vit import vit_small_patch16_224

    factory = {"vit_small": vit_small_patch16_224, "swin_tiny": swin_tiny_like,
               "bert_base": bert_base}[shape]
    return factory(norm=norm, seed=0).eval()


def example(shape: str, batch: int, device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(batch)
    if shape == "bert_base":
        ids = torch.randint(0, 30000, (batch, SEQ), generator=generator)
        return ids.to(device), torch.ones(batch, SEQ, dtype=torch.long, device=device)
    return (torch.rand(batch, 3, 224, 224, generator=generator).to(device),)


def check_fold_claim(shape: str) -> dict:
    """On the CPU: the UN model, exported and folded, is the no-norm twin's graph and computes
    what the UN model computes."""
    import onnx
    import onnxruntime as ort

    from unfold.fold import fold_model
    from unfold.fold.transfer import RULES

    args = example(shape, 1, "cpu")
    exported = {}
    for norm in ("un", "none"):
        path = Path(f"/tmp/gpu_suite_{shape}_{norm}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build(shape, norm), args, str(path), dynamo=False)
        exported[norm] = onnx.load(str(path))
    folded, report = fold_model(exported["un"])
    twin, _ = fold_model(exported["none"], skip=list(RULES))
    ops = Counter(n.op_type for n in folded.graph.node)
    twin_ops = Counter(n.op_type for n in twin.graph.node)
    feeds = {i.name: a.numpy() for i, a in zip(exported["un"].graph.input, args, strict=False)}

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]

    want, got = run(exported["un"]), run(folded)
    error = float(np.abs(got - want).max() / np.abs(want).max())
    if ops != twin_ops or report.left or error > 1e-5:
        raise SystemExit(f"{shape}: the fold is not the twin (extra {ops - twin_ops}, missing "
                         f"{twin_ops - ops}, left {len(report.left)}, error {error:.2g})")
    return {"sites": len(report.sites), "folded": len(report.folded), "error_rel": error,
            "ops_equal_twin": True}


def time_variants(shape: str, batch: int, mode: str, device: str, rounds: int,
                  warmup: int) -> dict:
    """One interleaved run of ln, un, none: ms per forward (CUDA events on a GPU)."""
    cuda = device == "cuda"
    models = {}
    for norm in NORMS:
        model = build(shape, norm).to(device)
        if mode == "compiled":
            model = torch.compile(model, mode="reduce-overhead" if cuda else "default")
        models[norm] = model
    args = example(shape, batch, device)
    memory = {}
    with torch.inference_mode():
        for norm, model in models.items():  # warm-up (and compilation), memory per variant
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                model(*args)
            if cuda:
                torch.cuda.synchronize()
                memory[norm] = torch.cuda.max_memory_allocated() / 2**20
        times: dict[str, list[float]] = {n: [] for n in NORMS}
        for _ in range(rounds):
            for norm, model in models.items():
                if cuda:
                    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                    start.record()
                    model(*args)
                    end.record()
                    end.synchronize()
                    times[norm].append(start.elapsed_time(end))
                else:
                    began = time.perf_counter()
                    model(*args)
                    times[norm].append((time.perf_counter() - began) * 1e3)
    from unfold.bench.stats import ratio_interval

    row: dict = {"shape": shape, "batch": batch, "mode": mode, "rounds": rounds,
                 "median_ms": {n: float(np.median(t)) for n, t in times.items()},
                 "max_memory_mib": memory or None, "ms": times}
    for norm in ("ln", "un"):
        ratio = ratio_interval(times[norm], times["none"])
        row[f"{norm}/none"] = [ratio.median, ratio.low, ratio.high]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--modes", nargs="+", choices=("eager", "compiled"),
                        default=["eager", "compiled"])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 and 2, eager, 3 rounds: does it run")
    parser.add_argument("--skip-check", action="store_true", help="skip the CPU fold check")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    if options.quick:
        options.batches, options.modes, options.rounds, options.warmup = [1, 2], ["eager"], 3, 1
    started = time.perf_counter()
    result: dict = {"device": options.device, "torch": torch.__version__,
                    "cuda": torch.version.cuda, "python": platform.python_version(),
                    "platform": platform.platform(), "checks": {}, "rows": []}
    if options.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    for shape in options.shapes:
        if not options.skip_check:
            print(f"[gpu-suite] {shape}: fold check on the CPU ...", file=sys.stderr, flush=True)
            result["checks"][shape] = check_fold_claim(shape)
        for mode in options.modes:
            for batch in options.batches:
                print(f"[gpu-suite] {shape} {mode} batch {batch} ...", file=sys.stderr,
                      flush=True)
                result["rows"].append(time_variants(shape, batch, mode, options.device,
                                                    options.rounds, options.warmup))
    print(f"{result.get('gpu', options.device)}, torch {torch.__version__}, fp32, "
          f"{options.rounds} interleaved rounds; ratio per round (median [95%])")
    print("shape | mode | batch | none ms | ln / none | un / none | max MiB ln / un / none")
    for row in result["rows"]:
        memory = row["max_memory_mib"]
        mem = " / ".join(f"{memory[n]:.0f}" for n in NORMS) if memory else "-"
        ln, un = row["ln/none"], row["un/none"]
        print(f"{row['shape']} | {row['mode']} | {row['batch']} | "
              f"{row['median_ms']['none']:.3f} | {ln[0]:.3f} [{ln[1]:.3f}, {ln[2]:.3f}] | "
              f"{un[0]:.3f} [{un[1]:.3f}, {un[2]:.3f}] | {mem}")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if options.json:
        options.json.write_text(json.dumps(result, indent=1))
        print(f"written {options.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
