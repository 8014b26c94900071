"""What a benchmark times: a model file, loaded for one engine (an .onnx for the ONNX engines, a
model.pt for `torch`), and for each batch size a runner and random inputs of that batch (never
zeros: BENCHMARKS.md). The same function prepares the model in the timing process and in the
memory child, so both run the same thing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unfold.engines import ONNX_ENGINES, Runner, check_runs, is_onnx_file, open_model, runner_for
from unfold.errors import UnfoldError, option
from unfold.inputs import Inputs, InputSpec, onnx_input_specs, random_batch


@dataclass
class Target:
    path: Path
    engine: str
    model: Any  # an onnx.ModelProto, or an unfold.load.LoadedModel for torch
    held: bool = False  # the caller's own module (no file: no memory child can load it)

    def specs(self, batch: int, inputs: Inputs | None = None) -> list[InputSpec]:
        inputs = Inputs() if inputs is None else inputs
        if self.engine in ONNX_ENGINES:
            specs = onnx_input_specs(self.model, inputs, batch=batch, npz_helps=False)
        else:
            specs = self.model.resolve_specs(inputs)
        fitted = []
        for spec in specs:
            if spec.shape and spec.shape[0] == batch:
                fitted.append(spec)
            elif 0 in spec.dynamic:
                fitted.append(spec.with_batch(batch))
            else:
                fix = "export it with a dynamic batch" if self.engine in ONNX_ENGINES else \
                    f"give {option('inputs.dynamic', ['batch'])}"
                raise UnfoldError(f"{self.path}: input {spec.name} has a fixed first "
                                  f"dimension {spec.shape[0] if spec.shape else '(scalar)'}: "
                                  f"batch {batch} cannot apply ({fix}, or bench at "
                                  f"{option('batches', [spec.shape[0]])})")
        return fitted

    def prepare(self, batch: int, *, threads: int | None = None, device: str = "cpu",
                compile: bool = False, seed: int = 0,
                inputs: Inputs | None = None
                ) -> tuple[Runner, dict[str, np.ndarray]]:
        specs = self.specs(batch, inputs)
        runner = runner_for(self.model, self.engine, device=device, threads=threads,
                            specs=specs, compile=compile)
        feeds = random_batch(specs, np.random.default_rng(seed))
        runner.run(feeds)  # fails here, with the inputs named, not inside the timing
        return runner, feeds


def load_target(path: Path, engine: str, *, trust: bool = False, arch: str | None = None,
                arch_kwargs: Mapping[str, Any] | None = None,
                swap: str | None = None) -> Target:
    check_runs(engine, path, is_onnx=is_onnx_file(path))
    return Target(path, engine, open_model(path, trust=trust, arch=arch, arch_kwargs=arch_kwargs,
                                           swap=swap))

