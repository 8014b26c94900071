"""The suite (BENCHMARKS.md, "Shapes that matter"): for each shape, the variants `ln`, `un` (as
exported), `un-onnxslim` (what a deployer tries first), `un-folded` (unfold) and `none` (every
norm an Identity: the limit), built from one factory and one seed so that only the norm
differs, exported with the same exporter (and `ln`, `un`, `none` given the same tidy of the
exporter's shape arithmetic the fold does, every fold rule skipped), and timed with
`unfold.bench` on each CPU engine at batch 1 and 8, interleaved, as ratios to `none` with 95%
intervals. Needs the `bench` extra (`pip install -c constraints.txt -e ".[bench]"`).

    python benchmarks/suite.py                                   # everything (about 30 min here)
    python benchmarks/suite.py --shapes deit_tiny --engines ort --rounds 20 20
    python benchmarks/suite.py --json benchmarks/results/suite.json --plot suite.png

Before timing it checks what the comparison rests on: `un-folded` has exactly `none`'s op
counts (a completed fold is the no-norm twin's graph), and every variant's outputs are finite.
The exported models stay in --work (a temporary folder by default). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sample_models, from a checkout

SHAPES = {  # name: what it is (the factories are in sample_models)
    "vit_small": "ViT-S/16, 224 px (dim 384, 12 blocks, 197 tokens)",
    "deit_tiny": "DeiT-T, 224 px (dim 192, 12 blocks, 197 tokens)",
    "swin_tiny": "Swin-T-like, 224 px (dim 96, 3136 tokens in stage 1)",
    "bert_base": "BERT-base-like, post-norm (dim 768, 12 layers, seq 128)",
}
VARIANTS = ("ln", "un", "un-onnxslim", "un-folded", "none")
SEQ = 128


def _model(shape: str, norm: str):  # noqa: ANN202 - a torch module
    from sample_models.bert import bert_base
    from sample_models.swin import swin_tiny_like
    from sample_models.vit import deit_tiny_patch16_224, vit_small_patch16_224

    factory = {"vit_small": vit_small_patch16_224, "deit_tiny": deit_tiny_patch16_224,
               "swin_tiny": swin_tiny_like, "bert_base": bert_base}[shape]
    return factory(norm=norm, seed=0).eval()


def _example(shape: str) -> tuple[tuple, list[str]]:
    import torch

    if shape == "bert_base":
        return ((torch.randint(0, 30000, (1, SEQ)), torch.ones(1, SEQ, dtype=torch.long)),
                ["input_ids", "attention_mask"])
    return (torch.rand(1, 3, 224, 224),), ["images"]


def _calibrate(shape: str, model) -> None:  # noqa: ANN001
    """UN's statistics as training leaves them (not the initial ones: folding γ/sqrt(1 + eps)
    would be a lesser test), by a few training-mode steps on random inputs; the timing does
    not depend on their values."""
    import torch

    if shape == "bert_base":
        args: tuple = (torch.randint(0, 30000, (4, SEQ)), torch.ones(4, SEQ, dtype=torch.long))
    else:
        args = (torch.rand(4, 3, 224, 224),)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*args)
    model.eval()


def export_variants(shape: str, folder: Path) -> dict[str, Path]:
    """The five variants of `shape` as ONNX files (TorchScript exporter, dynamic batch)."""
    import onnx
    import torch

    try:
        import onnxslim
    except ImportError:
        sys.exit("benchmarks/suite.py needs onnxslim (the `un-onnxslim` variant): "
                 "pip install -c constraints.txt -e \".[bench]\"")

    from unfold.fold import fold_model
    from unfold.fold.transfer import RULES

    args, names = _example(shape)
    paths = {v: folder / f"{shape}-{v}.onnx" for v in VARIANTS}
    for norm, variant in (("ln", "ln"), ("un", "un"), ("none", "none")):
        model = _model(shape, norm)
        if norm == "un":
            _calibrate(shape, model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(paths[variant]), dynamo=False, input_names=names,
                              output_names=["output"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "output"]})
    raw_un = onnx.load(str(paths["un"]))
    onnx.save(onnxslim.slim(raw_un), str(paths["un-onnxslim"]))  # from the raw export
    folded, report = fold_model(raw_un)
    if report.left or report.online:
        raise SystemExit(f"{shape}: the fold left {len(report.left)} sites")
    onnx.save(folded, str(paths["un-folded"]))
    # the fold also folds the exporter's shape arithmetic; `ln`, `un` and `none` get that same
    # tidy (every rule skipped: the norms stay) so that only the norms differ
    for variant in ("ln", "un", "none"):
        tidied, _ = fold_model(onnx.load(str(paths[variant])), skip=list(RULES))
        onnx.save(tidied, str(paths[variant]))
    ops = {v: Counter(n.op_type for n in onnx.load(str(p)).graph.node) for v, p in paths.items()}
    if ops["un-folded"] != ops["none"]:
        raise SystemExit(f"{shape}: the folded model is not the no-norm twin's graph: "
                         f"{ops['un-folded'] - ops['none']} more, {ops['none'] - ops['un-folded']} "
                         f"fewer")
    return paths


def _inputs(shape: str):  # noqa: ANN202
    from unfold.inputs import Inputs

    if shape == "bert_base":
        return Inputs(int_range={"input_ids": (0, 29999), "attention_mask": (1, 1)})
    return Inputs(float_range=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--engines", nargs="+", choices=("ort", "openvino"),
                        default=["ort", "openvino"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", nargs="+", type=int, default=[60, 30],
                        help="timed rounds per batch, in --batches order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--work", type=Path, help="keep the exported models here")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--plot", type=Path, help="a PNG of the ratios")
    options = parser.parse_args()
    if len(options.rounds) != len(options.batches):
        parser.error("give one --rounds per --batches entry")

    from unfold.bench import bench

    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = options.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for shape in options.shapes:
            print(f"[suite] exporting {shape} (5 variants) ...", file=sys.stderr, flush=True)
            paths = export_variants(shape, folder)
            for engine in options.engines:
                for batch, rounds in zip(options.batches, options.rounds, strict=True):
                    print(f"[suite] {shape} {engine} batch {batch}: {rounds} rounds ...",
                          file=sys.stderr, flush=True)
                    report = bench(list(paths.values()), engine=engine, batches=(batch,),
                                   threads=options.threads, rounds=rounds, warmup=3,
                                   baseline=f"{shape}-none", inputs=_inputs(shape),
                                   memory=not options.no_memory)
                    for result in report.results:
                        rows.append({
                            "shape": shape, "engine": engine, "runtime": report.runtime,
                            "batch": batch, "variant": result.model.removeprefix(f"{shape}-"),
                            "median_ms": result.latency.median * 1e3,
                            "ratio": result.ratio.__dict__ if result.ratio else None,
                            "peak_mib": result.memory.peak_mib if result.memory else None,
                            "rounds": rounds, "environment": report.environment})
    _print(rows, options)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(rows, indent=1))
        print(f"written {options.json}", file=sys.stderr)
    if options.plot:
        _plot(rows, options.plot)
        print(f"written {options.plot}", file=sys.stderr)


def _print(rows: list[dict], options: argparse.Namespace) -> None:
    print(f"ratio to `none` per round (median [95% interval]); fp32, {options.threads} threads, "
          f"{rows[0]['environment']['cpu'] if rows else ''}")
    header = ["shape", "engine", "batch", "none ms", *[v for v in VARIANTS if v != "none"]]
    if not options.no_memory:
        header.append("peak MiB ln / folded / none")
    print(" | ".join(header))
    keys = sorted({(r["shape"], r["engine"], r["batch"]) for r in rows},
                  key=lambda k: (list(SHAPES).index(k[0]), k[1], k[2]))
    for shape, engine, batch in keys:
        group = {r["variant"]: r for r in rows
                 if (r["shape"], r["engine"], r["batch"]) == (shape, engine, batch)}
        cells = [shape, engine, str(batch), f"{group['none']['median_ms']:.2f}"]
        for variant in VARIANTS[:-1]:
            ratio = group[variant]["ratio"]
            cells.append(f"{ratio['median']:.3f} [{ratio['low']:.3f}, {ratio['high']:.3f}]")
        if not options.no_memory:
            cells.append(" / ".join(f"{group[v]['peak_mib']:.0f}"
                                    for v in ("ln", "un-folded", "none")))
        print(" | ".join(cells))


def _plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["shape"], r["engine"], r["batch"]) for r in rows},
                  key=lambda k: (list(SHAPES).index(k[0]), k[1], k[2]))
    figure, axis = plt.subplots(figsize=(10, 0.5 * len(keys) * 4 / 3 + 1.5))
    shown = [v for v in VARIANTS if v != "none"]
    for i, key in enumerate(keys):
        group = {r["variant"]: r for r in rows if (r["shape"], r["engine"], r["batch"]) == key}
        for j, variant in enumerate(shown):
            ratio = group[variant]["ratio"]
            y = i + (j - 1.5) * 0.18
            axis.errorbar([ratio["median"]], [y], xerr=[[ratio["median"] - ratio["low"]],
                                                        [ratio["high"] - ratio["median"]]],
                          fmt="o", capsize=3, color=f"C{j}", label=variant if i == 0 else None)
    axis.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    axis.set_yticks(range(len(keys)), [f"{s} {e} b{b}" for s, e, b in keys])
    axis.invert_yaxis()
    axis.set_xlabel("time per round / none's (median, 95% interval); 1.0 = the no-norm limit")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    cpu = rows[0]["environment"]["cpu"] if rows else ""
    axis.set_title(f"unfold bench suite: fp32, CPU ({cpu})", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
