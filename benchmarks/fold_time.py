"""Fold time and peak memory of `unfold fold` on big models: a ViT-B/16-sized
pre-norm ViT (86M parameters) and a BERT-base-sized post-norm encoder, with UnifiedNorm.

    python benchmarks/fold_time.py            # both, exported with torch.onnx (dynamo)
    python benchmarks/fold_time.py --model vit_base

Each model is exported once (not timed), then folded in a fresh process so the peak memory
(VmHWM, this process's own peak resident set) is the fold's: loading the ONNX file with its
weights apart, folding, checking and writing the result, as `unfold fold` does. The goal
(issue 4): seconds, and peak memory under twice the weights (reported over the process's
resident memory after its imports, and in total).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sample_models, from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_mib  # noqa: E402

VARIANTS = ("vit_base", "bert_base")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=VARIANTS, action="append")
    parser.add_argument("--fold-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fold_child:
        fold_child(args.fold_child)
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
