"""Fold time and peak memory of `unfold fold` on big models: a ViT-B/16-sized
pre-norm ViT (86M parameters) and a BERT-base-sized post-norm encoder, with UnifiedNorm.

    python benchmarks/fold_time.py            # both, exported with torch.onnx (dynamo)
    python benchmarks/fold_time.py --model vit_base
    python benchmarks/fold_time.py --sweep    # fold time against depth, small synthetic stacks

Each model is exported once (not timed), then folded in a fresh process so the peak memory
(VmHWM, this process's own peak resident set) is the fold's: loading the ONNX file with its
weights apart, folding, checking and writing the result, as `unfold fold` does. The goal
(issue 4): seconds, and peak memory under twice the weights (reported over the process's
resident memory after its imports, and in total).

`--sweep` times the fold against depth, where the weights are small and the graph is what
costs: post-norm (x = norm(x + attn(x)), x = norm(x + mlp(x))) and pre-norm
(x = x + attn(norm(x)), x = x + mlp(norm(x)), a final norm) stacks of sample_models' layers,
dim 64, 4 heads, MLP 128, a Linear head, 16 tokens, with UnifiedNorms whose constants are not
trivial (ρ = exp(U(-0.4, 0.4)), γ = exp(U(-0.2, 0.2)), β = N(0, 0.1): log-symmetric, so a
post-norm stream's carried product neither vanishes nor explodes with depth), and each
branch's output projection scaled by 0.1 (a 128-block stack of torch's default init is
chaotic: weights moved by 2^-24 move its output by O(1), and no error check means anything).
Each depth is exported once (TorchScript exporter unless `--exporter dynamo`), then folded
`--repeats` times in ONE fresh process per style and depth, each fold on a freshly loaded
copy, only `fold_parts` timed: the best wall time, the first (which pays the process's
one-time costs), the best process CPU time (less moved by other load on the machine), each
best's ratio to the previous depth's, and how long Python's cyclic garbage collector ran
inside the best fold (`--gc-off` pauses it, to see what the fold costs without it). The
folded model is checked against the original in ONNX Runtime, in fp32 and in float64 (beside
the float64 floor: how far weights moved by 2^-24, the rounding of a fold's fp32 weights,
move the unfolded model). The target: each doubling of depth at most ~2.2x the time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sample_models, from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_mib  # noqa: E402

VARIANTS = ("vit_base", "bert_base")
STYLES = ("post", "pre")
DEPTHS = (16, 32, 64, 128)
RESULTS = Path(__file__).resolve().parent / "results"


def export(name: str, path: Path) -> None:
    import torch

    from sample_models.bert import bert_base
    from sample_models.vit import vit_small_patch16_224

    torch.manual_seed(0)
    if name == "vit_base":  # ViT-B/16: dim 768, 12 blocks, 12 heads
        model = vit_small_patch16_224(norm="un", dim=768, heads=12)
        args: tuple = (torch.rand(1, 3, 224, 224),)
    else:
        model = bert_base(norm="un")
        args = (torch.randint(0, 30522, (1, 128)), torch.ones(1, 128, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, str(path), dynamo=True, external_data=False)


def fold_child(path: Path) -> None:
    """Runs in a fresh process: load, fold, write (as `unfold fold` does); prints one
    JSON line. `base_mib` is the process's resident memory after its imports, before the
    model: what the fold itself adds is peak - base."""
    from unfold.fold import fold_parts
    from unfold.onnx_files import load_onnx_parts, save_onnx_atomic

    base = peak_rss_mib()
    start = time.perf_counter()
    parts = load_onnx_parts(path)
    loaded = time.perf_counter()
    folded, report = fold_parts(parts)
    done = time.perf_counter()
    save_onnx_atomic(folded, path.with_name(path.stem + "-folded.onnx"))
    written = time.perf_counter()
    print(json.dumps({"load_s": loaded - start, "fold_s": done - loaded,
                      "write_s": written - done, "base_mib": base,
                      "peak_rss_mib": peak_rss_mib(), "sites": len(report.sites),
                      "folded": len(report.folded), "left": len(report.left)}))


# --- --sweep: fold time against depth --------------------------------------------------------

def export_stack(style: str, depth: int, path: Path, exporter: str, dim: int = 64,
                 tokens: int = 16) -> None:
    """A `style` ("post" or "pre") stack of `depth` blocks of sample_models' layers."""
    import torch
    from torch import nn

    from sample_models.layers import PostNormEncoderLayer
    from sample_models.vit import Block
    from unfold.nn import UnifiedNorm

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if style == "post":
                self.blocks = nn.ModuleList(
                    [PostNormEncoderLayer(dim, 4, 2 * dim, "un", None, activation="gelu")
                     for _ in range(depth)])
                self.final: nn.Module = nn.Identity()
            else:
                self.blocks = nn.ModuleList([Block(dim, 4, 2.0, "un", None)
                                             for _ in range(depth)])
                self.final = UnifiedNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x, None) if style == "post" else block(x)
            return self.head(self.final(x))

    torch.manual_seed(0)
    model = Stack().eval()
    draw = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("out_proj", "fc2")):  # small branches: the deep stack stays
                module.weight.mul_(0.1)  # well-conditioned, so the error check means something
            if isinstance(module, UnifiedNorm):
                channels = module.num_channels
                module.running_var.copy_(torch.rand(channels, generator=draw).mul(0.8)
                                         .sub(0.4).exp())
                module.weight.copy_(torch.rand(channels, generator=draw).mul(0.4).sub(0.2)
                                    .exp())
                module.bias.copy_(torch.randn(channels, generator=draw).mul(0.1))
    args = (torch.randn(1, tokens, dim, generator=draw),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False,
                              input_names=["x"], output_names=["y"])
        else:
            torch.onnx.export(model, args, str(path), dynamo=False,
                              input_names=["x"], output_names=["y"])


def sweep_child(path: Path, repeats: int, max_scale: float | None, gc_off: bool) -> None:
    """In a fresh process: `repeats` folds of freshly loaded copies (fold_parts timed, and the
    time Python's cyclic garbage collector took inside it), then the last result checked
    against the original in ONNX Runtime, in fp32 and in float64 (fold_numerics'
    float64_model; with the unfolded model's float64 output moved by perturbing its weights
    by 2^-24, what rounding a fold's weights to fp32 alone can do, as the floor); prints one
    JSON line."""
    import gc

    import numpy as np
    import onnx
    import onnxruntime as ort
    from fold_numerics import float64_model, perturbed

    from unfold.fold import fold_parts
    from unfold.onnx_files import load_onnx_parts

    paused = [0.0]
    started: list[float] = []

    def clock(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        else:
            paused[0] += time.perf_counter() - started.pop()

    gc.callbacks.append(clock)
    times, cpu_times, gc_times = [], [], []
    for _ in range(repeats):
        parts = load_onnx_parts(path)
        nodes = len(parts.skeleton.graph.node)
        paused[0] = 0.0
        if gc_off:
            gc.disable()
        start, cpu = time.perf_counter(), time.process_time()
        folded, report = fold_parts(parts, max_scale=max_scale)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
        gc.enable()
        gc_times.append(paused[0])
    gc.callbacks.remove(clock)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3

    def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    def error(got: np.ndarray, want: np.ndarray) -> float:
        return float(np.abs(got - want).max() / np.abs(want).max())

    x = np.random.default_rng(0).standard_normal((1, 16, 64)).astype(np.float32)
    original, model = onnx.load(str(path)), folded.to_model()
    want64 = run(float64_model(original), x.astype(np.float64))
    floor = max(error(run(perturbed(float64_model(original), 2.0**-24, seed),
                          x.astype(np.float64)), want64) for seed in range(2))
    best = times.index(min(times))
    print(json.dumps({"fold_s": times, "cpu_s": cpu_times, "gc_s": gc_times[best],
                      "nodes_before": nodes,
                      "nodes_after": len(model.graph.node), "sites": len(report.sites),
                      "folded": len(report.folded), "left": len(report.left),
                      "err_fp32": error(run(model, x), run(original, x)),
                      "err_f64": error(run(float64_model(model), x.astype(np.float64)),
                                       want64),
                      "f64_floor": floor}))


def versions() -> dict[str, str]:
    import platform

    import onnx
    import onnx_graphsurgeon
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx_graphsurgeon": onnx_graphsurgeon.__version__}


def sweep(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in STYLES:
            for depth in args.depths:
                path = Path(tmp) / f"{style}-{depth}.onnx"
                print(f"exporting {style}-norm x{depth} ...", file=sys.stderr)
                start = time.perf_counter()
                export_stack(style, depth, path, args.exporter)
                exported = time.perf_counter() - start
                command = [sys.executable, __file__, "--sweep-child", str(path),
                           "--repeats", str(args.repeats)]
                if args.max_scale is not None:
                    command += ["--max-scale", str(args.max_scale)]
                if args.gc_off:
                    command.append("--gc-off")
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"style": style, "depth": depth, "export_s": exported,
                             "best_s": min(result["fold_s"]),
                             "best_cpu_s": min(result["cpu_s"]), **result})
    print(f"fold time against depth: dim 64, {args.exporter} export, best of {args.repeats} "
          f"folds in one fresh process per row (fold_parts only; load not timed)"
          + (f", max_scale {args.max_scale:g}" if args.max_scale is not None else "")
          + (", garbage collector off during the fold" if args.gc_off else ""))
    print("cpu s: the best process CPU time (less moved by other load than wall time); "
          "gc s: of the best fold, the time Python's cyclic garbage collector took; errors: "
          "max |folded - unfolded| / max |unfolded| (f64 floor: the unfolded model's, from "
          "weights x (1 +- 2^-24))")
    print(f"{'style':<6}{'blocks':>7}{'nodes':>7}{'sites':>7}{'folded':>8}{'best s':>8}"
          f"{'first s':>9}{'x prev':>8}{'cpu s':>7}{'x prev':>8}{'ms/node':>9}{'gc s':>7}"
          f"{'err fp32':>10}"
          f"{'err f64':>9}{'f64 floor':>11}")
    previous: dict[str, dict[str, Any]] = {}
    for r in rows:
        last = previous.get(r["style"])
        ratio = r["best_s"] / last["best_s"] if last else None
        cpu_ratio = r["best_cpu_s"] / last["best_cpu_s"] if last else None
        previous[r["style"]] = r
        r["ratio_to_previous"], r["cpu_ratio_to_previous"] = ratio, cpu_ratio
        print(f"{r['style']:<6}{r['depth']:>7}{r['nodes_before']:>7}{r['sites']:>7}"
              f"{r['folded']:>8}{r['best_s']:>8.2f}{r['fold_s'][0]:>9.2f}"
              f"{'-' if ratio is None else f'{ratio:.2f}':>8}{r['best_cpu_s']:>7.2f}"
              f"{'-' if cpu_ratio is None else f'{cpu_ratio:.2f}':>8}"
              f"{1000 * r['best_s'] / r['nodes_before']:>9.2f}{r['gc_s']:>7.2f}"
              f"{r['err_fp32']:>10.1e}{r['err_f64']:>9.1e}{r['f64_floor']:>11.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"exporter": args.exporter, "repeats": args.repeats,
                                         "max_scale": args.max_scale, "gc_off": args.gc_off,
                                         "versions": versions(), "rows": rows}, indent=1))
        print(f"written {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=VARIANTS, action="append")
    parser.add_argument("--sweep", action="store_true",
                        help="fold time against depth on small synthetic stacks")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--max-scale", type=float, help="fold with this bound (--sweep)")
    parser.add_argument("--gc-off", action="store_true",
                        help="--sweep: pause Python's garbage collector during each fold")
    parser.add_argument("--json", type=Path, help="--sweep: write the rows here "
                        "(default benchmarks/results/fold_time_sweep.json)")
    parser.add_argument("--fold-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sweep-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fold_child:
        fold_child(args.fold_child)
        return
    if args.sweep_child:
        sweep_child(args.sweep_child, args.repeats, args.max_scale, args.gc_off)
        return
    if args.sweep:
        args.json = args.json or RESULTS / "fold_time_sweep.json"
        sweep(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or VARIANTS:
            path = Path(tmp) / f"{name}.onnx"
            print(f"exporting {name} ...", file=sys.stderr)
            export(name, path)
            weights_mib = path.stat().st_size / 2**20
            out = subprocess.run([sys.executable, __file__, "--fold-child", str(path)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"model": name, "onnx_mib": weights_mib, **result})
    print(f"{'model':<10}{'ONNX MiB':>10}{'load s':>8}{'fold s':>8}{'write s':>8}"
          f"{'base MiB':>10}{'peak MiB':>10}{'(peak-base)/ONNX':>18}{'sites':>7}{'folded':>8}")
    for r in rows:
        print(f"{r['model']:<10}{r['onnx_mib']:>10.0f}{r['load_s']:>8.2f}{r['fold_s']:>8.2f}"
              f"{r['write_s']:>8.2f}{r['base_mib']:>10.0f}{r['peak_rss_mib']:>10.0f}"
              f"{(r['peak_rss_mib'] - r['base_mib']) / r['onnx_mib']:>18.2f}"
              f"{r['sites']:>7}{r['folded']:>8}")


if __name__ == "__main__":
    main()
