"""The fold on timm architectures that no test lists (the zoo's cases are what the tests hold
the fold to; this is the check on what nobody tuned it for): each built small from its timm
factory with random weights (nothing downloaded), its LayerNorms swapped to UnifiedNorm (or,
for the BatchNorm models, its BatchNorms given random statistics), exported by both exporters,
folded and measured against its no-norm twin by `tests.zoo.harness.fold_case`; the table is
benchmarks/zoo_fold.py's. Needs timm (`.venv-timm`, built by .ci/zoo-timm).

    .venv-timm/bin/python benchmarks/zoo_sweep.py                  # every architecture
    .venv-timm/bin/python benchmarks/zoo_sweep.py --cases pit_ti_224 --exporters torchscript
    .venv-timm/bin/python benchmarks/zoo_sweep.py --json benchmarks/results/zoo_sweep.json

A row's "extra" is what the folded model keeps beyond its folded twin; "what stays" below the
table names, per site left, why (a norm before a non-linearity, a padded Conv, a bias-less
query: the minima DESIGN.md lists). A model whose export fails in torch is a FAILED row with
torch's message: not the fold's failure, but no check either.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.zoo, from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo_fold import format_row, print_table, run_one  # noqa: E402

# name: (the factory's keyword arguments, image side, norms: "ln" swapped to UN / "bn" kept)
SMALL_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
ARCHITECTURES: dict[str, tuple[dict[str, Any], int, str]] = {
    "vit_tiny_patch16_224": (SMALL_VIT, 32, "ln"),
    "vit_small_patch16_224.biasless": (dict(SMALL_VIT, qkv_bias=False, class_token=False,
                                            global_pool="avg", fc_norm=True, init_values=0.1),
                                       32, "ln"),
    "vit_base_patch16_clip_224": (dict(SMALL_VIT, pre_norm=True), 32, "ln"),
    "vit_small_patch14_reg4_dinov2": (dict(SMALL_VIT, init_values=0.1), 32, "ln"),
    "deit3_small_patch16_224": (SMALL_VIT, 32, "ln"),
    "flexivit_small": (SMALL_VIT, 32, "ln"),
    "cait_xxs24_224": (dict(SMALL_VIT, depth_token_only=1), 32, "ln"),
    "xcit_nano_12_p16_224": (dict(img_size=32, embed_dim=32, depth=2, num_heads=2), 32, "ln"),
    "beit_base_patch16_224": (SMALL_VIT, 32, "ln"),
    "eva02_tiny_patch14_224": (dict(SMALL_VIT, img_size=28, patch_size=14), 28, "ln"),
    "pvt_v2_b0": ({}, 64, "ln"),
    "twins_svt_small": ({}, 64, "ln"),
    "twins_pcpvt_small": ({}, 64, "ln"),
    "pit_ti_224": (dict(img_size=64), 64, "ln"),
    "coat_lite_tiny": (dict(img_size=64), 64, "ln"),
    "crossvit_tiny_240": ({}, 240, "ln"),
    "tnt_s_patch16_224": (dict(img_size=32, depth=2), 32, "ln"),
    "nest_tiny": (dict(img_size=64), 64, "ln"),
    "volo_d1_224": (dict(img_size=64), 64, "ln"),
    "mixer_s16_224": (dict(img_size=32), 32, "ln"),
    "gmlp_ti16_224": (dict(img_size=32), 32, "ln"),
    "convnextv2_atto": (dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), 32, "ln"),
    "convformer_s18": ({}, 64, "ln"),
    "poolformerv2_s12": ({}, 64, "ln"),
    "edgenext_xx_small": (dict(depths=(1, 1, 1, 1)), 64, "ln"),
    "davit_tiny": (dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128),
                        num_heads=(1, 2, 4, 8)), 64, "ln"),
    "focalnet_tiny_srf": ({}, 64, "ln"),
    "gcvit_xxtiny": (dict(img_size=64), 64, "ln"),
    "mvitv2_tiny": (dict(img_size=64), 64, "ln"),
    "hiera_tiny_224": (dict(img_size=64, stages=(1, 1, 1, 1)), 64, "ln"),
    "swinv2_cr_tiny_ns_224": (dict(img_size=64, window_size=4, depths=(1, 1, 1, 1),
                                   embed_dim=16, num_heads=(1, 2, 4, 8)), 64, "ln"),
    "tiny_vit_5m_224": ({}, 224, "ln"),
    "efficientformer_l1": ({}, 224, "ln"),
    "efficientformerv2_s0": ({}, 224, "bn"),
    "mobilevit_xxs": ({}, 64, "ln"),
    "mobilevitv2_050": ({}, 64, "ln"),
    "visformer_tiny": (dict(img_size=64), 64, "bn"),
    "efficientvit_m0": (dict(img_size=64), 64, "bn"),
    "fastvit_t8": ({}, 64, "bn"),
    "repvit_m0_9": ({}, 64, "bn"),
    "inception_next_tiny": (dict(depths=(1, 1, 1, 1)), 64, "bn"),
    "starnet_s1": ({}, 64, "bn"),
    "nextvit_small": ({}, 224, "bn"),
    "rdnet_tiny": ({}, 64, "ln"),
    "maxvit_rmlp_pico_rw_256": (dict(img_size=64, depths=(1, 1, 1, 1)), 64, "bn"),
}


def _build(name: str, kwargs: dict[str, Any], norms: str):
    from torch import nn

    from tests.zoo.timm_cases import SEED, _swapped_or_twin, batch_norms_or_twin

    factory = name.split(".")[0]

    def build(twin: bool) -> nn.Module:
        import timm
        import torch

        torch.manual_seed(SEED)
        model = timm.create_model(factory, pretrained=False, num_classes=10, **kwargs)
        if norms == "ln":
            return _swapped_or_twin(model, ("gamma", "gamma_1", "gamma_2", "scale"), twin)
        return batch_norms_or_twin(model, twin)

    return build


def cases() -> list[Any]:
    from tests.zoo.harness import EXPORTERS, ZooCase
    from tests.zoo.timm_cases import _image

    return [ZooCase(name, _build(name, kwargs, norms), _image(px), ("pixels",),
                    exporters=EXPORTERS)
            for name, (kwargs, px, norms) in ARCHITECTURES.items()]


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", metavar="NAME", choices=list(ARCHITECTURES),
                        help="only these architectures (default: all)")
    parser.add_argument("--exporters", nargs="+", choices=("dynamo", "torchscript"))
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every row here")
    args = parser.parse_args(argv)
    rows = []
    for case in cases():
        if args.cases and case.name not in args.cases:
            continue
        for exporter in args.exporters or case.exporters:
            row = run_one(case, exporter)
            rows.append(row)
            status = f" FAILED {row['error']}" if "error" in row else ""
            extra = "" if status else f" extra {row['extra']} rel err {row['error_rel']:.1e}"
            print(f"{case.name} / {exporter}: {row['seconds']:.1f}s{status}{extra}",
                  file=sys.stderr, flush=True)
    print_table([format_row(r) for r in rows])
    print("\nwhat stays (sites composed into another are counted on it, not listed):")
    for r in rows:
        for site in r.get("leftovers", []):
            print(f"{r['case']} / {r['exporter']}: {site['status']} {site['name']}: "
                  f"{'; '.join(site['reasons'][:2]) or '-'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
