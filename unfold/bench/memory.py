"""Peak memory of one model on one engine, in a process of its own (BENCHMARKS.md: each variant
in its own process, or the first model's arena and the allocator's high-water mark would be
charged to the next). The child imports the engine, notes its resident memory, loads the model,
runs it a few times on the benchmark's inputs and reports its peak resident memory (VmHWM) and
what the model added to the baseline.

    python -m unfold.bench.memory '{"model": "m.onnx", "engine": "ort", "batch": 8, ...}'
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unfold.errors import ExitCode, UnfoldError

RUNS = 5  # timed nothing; enough runs for every arena and cache to reach its size
ENGINE_MODULES = {"ort": "onnxruntime", "openvino": "openvino", "trt": "tensorrt",
                  "torch": "torch"}


@dataclass(frozen=True)
class MemoryUse:
    peak_mib: float  # the child's peak resident memory
    model_mib: float  # that peak less the resident memory once the engine was imported

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_kib() -> int:
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def measure_in_child(job: dict[str, Any], timeout: float = 600) -> MemoryUse:
    """Run `job` (model, engine, batch, threads, device, inputs, seed, compile, trust, arch,
    arch_kwargs, swap) in a fresh interpreter and read its report."""
    done = subprocess.run([sys.executable, "-m", "unfold.bench.memory", json.dumps(job)],
                          capture_output=True, text=True, timeout=timeout)
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), None)
    if done.returncode != 0 or line is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UnfoldError(f"measuring the memory of {job['model']} failed: {last}",
                          ExitCode.CHECK_FAILED)
    return MemoryUse(**json.loads(line))


def _child(job: dict[str, Any]) -> MemoryUse:
    import importlib

    from unfold.bench.models import load_target

    # the libraries (the engine's, onnx, torch to load a model.pt) belong to the baseline,
    # not to the model
    for module in (ENGINE_MODULES[job["engine"]], "onnx", "unfold.onnx_files",
                   *(["unfold.load", "unfold.pipeline"] if job["engine"] == "torch" else [])):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    from unfold.inputs import Inputs

    base = _status_kib("VmRSS") or _peak_kib()
    target = load_target(Path(job["model"]), job["engine"], trust=job.get("trust", False),
                         arch=job.get("arch"), arch_kwargs=job.get("arch_kwargs"),
                         swap=job.get("swap"))
    runner, feeds = target.prepare(job["batch"], threads=job.get("threads"),
                                   device=job.get("device", "cpu"),
                                   compile=job.get("compile", False), seed=job.get("seed", 0),
                                   inputs=Inputs.from_json(job["inputs"]))
    for _ in range(RUNS):
        runner.run(feeds)
    peak = _peak_kib()
    return MemoryUse(peak / 1024, max(0, peak - base) / 1024)


def main() -> None:
    try:
        use = _child(json.loads(sys.argv[1]))
    except UnfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(int(exc.exit_code)) from None
    print(json.dumps(use.to_dict()))


if __name__ == "__main__":
    main()
