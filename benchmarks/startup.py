"""Start-up time of each `unfold` command: wall time of a fresh `python -m cli ...` process
(median of --repeats), and which heavy libraries it imported. Only `convert`, and `verify`
with a torch reference, need torch; the rest must not pay for it.

    python benchmarks/startup.py                  # every command, 5 runs each
    python benchmarks/startup.py --repeats 11 --json benchmarks/results/startup.json

The commands run on a tiny ONNX model written to a temporary folder (`inspect`, `fold`), so
what is timed is start-up plus a few milliseconds of work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "onnx_graphsurgeon", "numpy", "transformers")
# runs the entry point as the console script does, then names the heavy modules it imported
PROBE = """
import atexit, sys
atexit.register(lambda: print("IMPORTED " + " ".join(
    m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
sys.argv = ["unfold", *{args!r}]
from cli.main import run
run()
"""


def _tiny_model(folder: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"s": rng.uniform(0.5, 2, 8), "b": rng.normal(size=8), "W": rng.normal(size=(8, 4))}
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["n"]),
             helper.make_node("MatMul", ["n", "W"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _commands(folder: Path, model: Path) -> list[tuple[str, list[str]]]:
    return [
        ("--version", ["--version"]),
        ("--help", ["--help"]),
        ("rules", ["rules"]),
        ("inspect MODEL", ["inspect", str(model)]),
        ("fold MODEL", ["fold", str(model), "--out", str(folder / "folded.onnx"), "--force"]),
        ("convert --help", ["convert", "--help"]),
        ("verify --help", ["verify", "--help"]),
    ]


def _time(args: list[str]) -> tuple[float, list[str], int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, args=args)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    line = next((x for x in done.stderr.splitlines() if x.startswith("IMPORTED")), "IMPORTED")
    return seconds, line.split()[1:], done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows here")
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _tiny_model(folder)
        _time(["--version"])  # one untimed run: the OS's file cache
        for label, args in _commands(folder, model):
            runs = [_time(args) for _ in range(options.repeats)]
            codes = {code for _, _, code in runs}
            rows.append({"command": f"unfold {label}",
                         "median_s": statistics.median(s for s, _, _ in runs),
                         "min_s": min(s for s, _, _ in runs), "imports": runs[0][1],
                         "exit_codes": sorted(codes)})
    width = max(len(r["command"]) for r in rows)
    print(f"start-up, median of {options.repeats} fresh processes "
          f"(python {sys.version.split()[0]})")
    print(f"{'command':<{width}}  median s  min s  exit  heavy imports")
    for r in rows:
        print(f"{r['command']:<{width}}  {r['median_s']:8.2f}  {r['min_s']:5.2f}  "
              f"{','.join(map(str, r['exit_codes'])):>4}  {' '.join(r['imports']) or '-'}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(rows, indent=1))
        print(f"written {options.json}")


if __name__ == "__main__":
    main()
