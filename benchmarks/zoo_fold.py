"""The fold on architectures nobody here wrote: every zoo case (Hugging Face, torch.nn, the UN
authors' T2T-ViT and fairseq layers, and timm
where `tests/zoo/timm_cases.py` imports) with every exporter it declares, measured against its
no-norm twin by `tests.zoo.harness.fold_case`.

    python benchmarks/zoo_fold.py                         # all cases, both exporters
    python benchmarks/zoo_fold.py --cases hf_bert hf_swin --exporters dynamo
    python benchmarks/zoo_fold.py --json benchmarks/results/zoo_fold.json

One row per case x exporter: norm sites, how many folded (folded or materialized) and left,
the ops the folded model has beyond its folded twin ("extra") and the twin's beyond it
("missing"), the largest error against the unfolded export relative to the output's scale,
and the seconds (two exports, two folds, two ONNX Runtime runs). A case that fails prints its
exception in its row and the others go on; the sites left, with their reasons, follow the
table. A case whose build needs a module that is not installed (timm, outside `.venv-timm`) is
reported SKIPPED. Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.zoo, from a checkout

MODULES = (("tests.zoo.hf_cases", "HF_CASES"), ("tests.zoo.torch_cases", "TORCH_CASES"),
           ("tests.zoo.authors_cases", "AUTHORS_CASES"), ("tests.zoo.timm_cases", "TIMM_CASES"))


def load_cases() -> tuple[list[Any], list[str]]:
    """Every case of every zoo module that imports; a note for each that does not."""
    cases: list[Any] = []
    notes: list[str] = []
    for module_name, attribute in MODULES:
        try:
            module = importlib.import_module(module_name)
            cases.extend(getattr(module, attribute))
        except Exception as error:  # a missing optional extra, or a module not written yet
            notes.append(f"{module_name}: not loaded ({type(error).__name__}: {error})")
    return cases, notes


def ops_delta(counts: Counter[str], sign: str) -> str:
    """Counter({'Mul': 2, 'Add': 1}) -> 'Mul+2 Add+1' (largest first, then by name)."""
    items = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return " ".join(f"{op}{sign}{n}" for op, n in items) or "-"


def run_one(case: Any, exporter: str) -> dict[str, Any]:
    from tests.zoo.harness import fold_case

    start = time.perf_counter()
    row: dict[str, Any] = {"case": case.name, "exporter": exporter}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fold_case(case, exporter)
    except ModuleNotFoundError as error:  # an optional extra (timm) missing: a skip, not a failure
        row.update(skipped=f"no module {error.name!r}", seconds=time.perf_counter() - start)
        return row
    except Exception as error:
        row.update(error=f"{type(error).__name__}: {error}".splitlines()[0][:300],
                   traceback=traceback.format_exc(), seconds=time.perf_counter() - start)
        return row
    report = result.report
    row.update(
        sites=len(report.sites), folded=len(report.folded), left=len(report.left),
        online=len(report.online), extra=dict(result.extra), missing=dict(result.missing),
        error_rel=result.error, seconds=time.perf_counter() - start,
        # what the table's extra ops come from: the sites left, and the materialized affines
        # (one per chain of sites composed together, named by its first site)
        leftovers=[{"name": s.name, "status": s.status, "reasons": s.reasons,
                    "merged": sum(t.merged_into == s.name for t in report.sites)}
                   for s in report.sites
                   if s.merged_into is None and s.status not in ("folded",)],
        report=report.to_dict(), twin_ops=dict(sorted(result.twin_ops.items())))
    return row


COLUMNS = ("case", "exporter", "sites", "folded", "left", "extra", "missing", "rel err", "s")


def format_row(row: dict[str, Any]) -> list[str]:
    if "skipped" in row:
        return [row["case"], row["exporter"], "", "", "", f"SKIPPED {row['skipped']}", "", "",
                f"{row['seconds']:.1f}"]
    if "error" in row:
        return [row["case"], row["exporter"], "", "", "", f"FAILED {row['error']}", "", "",
                f"{row['seconds']:.1f}"]
    return [row["case"], row["exporter"], str(row["sites"]), str(row["folded"]),
            str(row["left"]), ops_delta(Counter(row["extra"]), "+"),
            ops_delta(Counter(row["missing"]), "-"), f"{row['error_rel']:.1e}",
            f"{row['seconds']:.1f}"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) if rows else len(COLUMNS[i])
              for i in range(len(COLUMNS))]
    # a failure's message is long: it does not widen the column for everyone
    widths[5] = min(widths[5], 40)

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(COLUMNS))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help="only these cases (default: all)")
    parser.add_argument("--exporters", nargs="+", choices=("dynamo", "torchscript"),
                        help="only these exporters (default: each case's own)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every row here")
    args = parser.parse_args(argv)

    cases, notes = load_cases()
    for note in notes:
        print(note, file=sys.stderr)
    if args.cases:
        unknown = set(args.cases) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown cases: {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(c.name for c in cases)}")
        cases = [c for c in cases if c.name in args.cases]

    rows: list[dict[str, Any]] = []
    for case in cases:
        for exporter in case.exporters:
            if args.exporters and exporter not in args.exporters:
                continue
            row = run_one(case, exporter)
            rows.append(row)
            status = f" FAILED {row['error']}" if "error" in row \
                else f" SKIPPED {row['skipped']}" if "skipped" in row else ""
            print(f"{row['case']} / {exporter}: {row['seconds']:.1f}s{status}",
                  file=sys.stderr, flush=True)

    print_table([format_row(r) for r in rows])
    details = [r for r in rows if r.get("leftovers") or "error" in r]
    if details:
        print("\nwhat stays (sites composed into another are counted on it, not listed):")
    for r in details:
        head = f"{r['case']} / {r['exporter']}"
        if "error" in r:
            print(f"{head}: FAILED\n{r['traceback']}")
            continue
        for site in r["leftovers"]:
            merged = f" (+{site['merged']} composed)" if site["merged"] else ""
            print(f"{head}: {site['status']} {site['name']}{merged}: "
                  f"{'; '.join(site['reasons']) or '-'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
