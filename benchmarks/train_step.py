"""Training-step time (forward + backward) of a ViT-S-sized pre-norm block stack with
LayerNorm vs UnifiedNorm, and the no-norm limit, measured as ../shared/BENCHMARKS.md says.

    python benchmarks/train_step.py                # ViT-S: dim 384, 12 blocks, 197 tokens, batch 32
    python benchmarks/train_step.py --quick        # a small smoke run (seconds)
    python benchmarks/train_step.py --device cuda  # on a GPU (CUDA events, synchronised)

The variants share every linear weight (same seed); only the norm differs. Rounds interleave the
variants (ln, un, none, ln, un, none, ...) after a warm-up, so drift hits them alike. The
headline is the per-round ratio un/ln (and ln/none, un/none) with a bootstrap 95% interval of
its median. Peak memory is measured per variant in a fresh process (`--memory`): peak RSS on
CPU, torch.cuda.max_memory_allocated on GPU. Results go to stdout as a table and to a JSON file
with versions, device, shapes and threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unfold.nn import create_norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_mib  # noqa: E402

VARIANTS = ("ln", "un", "none")


class Block(nn.Module):
    """timm's ViT block, pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, norm: str) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = create_norm(norm, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = create_norm(norm, dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def build(norm: str, dim: int, depth: int, heads: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # the same linear weights for every variant
    return nn.Sequential(*[Block(dim, heads, norm) for _ in range(depth)])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).float().square().mean().backward()


def bootstrap_median(values: np.ndarray, rng: np.random.Generator, n: int = 2000):
    samples = rng.choice(values, size=(n, values.size), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.median(values)), float(np.quantile(medians, 0.025)), float(
        np.quantile(medians, 0.975))


def measure_memory(args: argparse.Namespace, variant: str) -> float:
    """Peak memory (MiB) of a fresh process running a few steps of one variant."""
    cmd = [sys.executable, __file__, "--memory-child", variant, "--dim", str(args.dim),
           "--depth", str(args.depth), "--tokens", str(args.tokens), "--batch", str(args.batch),
           "--heads", str(args.heads), "--threads", str(args.threads), "--device", args.device]
    if args.compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model = build(args.memory_child, args.dim, args.depth, args.heads).to(device).train()
    if args.compile:
        model = torch.compile(model)
    x = torch.randn(args.batch, args.tokens, args.dim, device=device)
    for _ in range(3):
        train_step(model, x)
    synchronize(device)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        print(peak_rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds (default: 15 on CPU, 200 on GPU; 0 with "
                             "--memory measures memory only)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory, each variant in its own process")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: dim 64, 2 blocks, 17 tokens, batch 4, 5 rounds")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default benchmarks/results/...)")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.dim, args.depth, args.heads, args.tokens, args.batch = 64, 2, 2, 17, 4
        args.rounds = 5 if args.rounds is None else args.rounds
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda given but this torch sees no CUDA device")
    rounds = args.rounds if args.rounds is not None else (200 if device.type == "cuda" else 15)
    if rounds == 0:
        if not args.memory:
            sys.exit("error: --rounds 0 measures nothing without --memory")
        memory = {v: measure_memory(args, v) for v in VARIANTS}
        print(f"peak memory (MiB), each variant in its own process, {device.type}: "
              + ", ".join(f"{v} {m:.0f}" for v, m in memory.items()))
        return

    models = {v: build(v, args.dim, args.depth, args.heads).to(device).train() for v in VARIANTS}
    if args.compile:
        models = {v: torch.compile(m) for v, m in models.items()}
    x = torch.randn(args.batch, args.tokens, args.dim, device=device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    total = args.warmup + rounds
    for i in range(total):
        last: dict[str, float] = {}
        for variant, model in models.items():
            synchronize(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                train_step(model, x)
                end.record()
                torch.cuda.synchronize(device)
                elapsed = start.elapsed_time(end) / 1000
            else:
                t0 = time.perf_counter()
                train_step(model, x)
                elapsed = time.perf_counter() - t0
            last[variant] = elapsed
            if i >= args.warmup:
                times[variant].append(elapsed)
        print(f"round {i + 1}/{total}" + (" (warm-up)" if i < args.warmup else "") + ": "
              + ", ".join(f"{v} {t * 1e3:.1f} ms" for v, t in last.items()), file=sys.stderr)

    rng = np.random.default_rng(0)
    arr = {v: np.array(t) for v, t in times.items()}
    summary = {
        v: {"median_ms": statistics.median(t) * 1e3,
            "p10_ms": float(np.quantile(arr[v], 0.1)) * 1e3,
            "p90_ms": float(np.quantile(arr[v], 0.9)) * 1e3}
        for v, t in times.items()
    }
    ratios = {}
    for num, den in (("un", "ln"), ("ln", "none"), ("un", "none")):
        med, lo, hi = bootstrap_median(arr[num] / arr[den], rng)
        ratios[f"{num}/{den}"] = {"median": med, "ci95": [lo, hi]}
    memory = {v: measure_memory(args, v) for v in VARIANTS} if args.memory else None

    shape = f"batch {args.batch} x {args.tokens} tokens x dim {args.dim}, {args.depth} blocks"
    print(f"\ntraining step (forward + backward), {shape}, {device.type}, "
          f"{args.threads} threads, {rounds} interleaved rounds"
          + (", torch.compile" if args.compile else ", eager"))
    print(f"{'variant':<8}{'median ms':>12}{'p10 ms':>10}{'p90 ms':>10}"
          + (f"{'peak MiB':>11}" if memory else ""))
    for v in VARIANTS:
        s = summary[v]
        print(f"{v:<8}{s['median_ms']:>12.1f}{s['p10_ms']:>10.1f}{s['p90_ms']:>10.1f}"
              + (f"{memory[v]:>11.0f}" if memory else ""))
    for name, r in ratios.items():
        print(f"{name:<8} {r['median']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
              "(median per-round ratio, bootstrap 95% CI)")

    record = {
        "benchmark": "train_step", "command": " ".join(sys.argv),
        "shape": {"batch": args.batch, "tokens": args.tokens, "dim": args.dim,
                  "depth": args.depth, "heads": args.heads},
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine()),
        "threads": args.threads, "rounds": rounds, "warmup_rounds": args.warmup,
        "compiled": args.compile, "versions": {"torch": torch.__version__,
                                               "python": platform.python_version()},
        "summary": summary, "ratios": ratios, "peak_memory_mib": memory,
        "times_s": times,
    }
    path = args.json or Path(__file__).parent / "results" / (
        f"train_step-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
