"""The options every command that runs a model shares: where the architecture comes from and
what the inputs are (all optional for a self-describing model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from unfold.inputs import InputOptions

ARCH = typer.Option(None, "--arch", help="package.module:factory that builds the architecture "
                                         "of a state dict or training checkpoint.")
ARCH_KWARGS = typer.Option(None, "--arch-kwargs",
                           help="""JSON keyword arguments for --arch, e.g. '{"dim": 384}'.""")
TRUST = typer.Option(False, "--trust", help="Allow loading a fully pickled module, or building "
                                            "the architecture a NAME.arch.json beside the "
                                            "weights names: this RUNS CODE THE FILE CHOOSES. "
                                            "Only for files you trust.")
INPUT_SHAPE = typer.Option([], "--input-shape", help="1x3x224x224, or name:1x128; repeat for "
                                                     "several inputs (in order, or by name).")
INPUT_DTYPE = typer.Option([], "--input-dtype", help="float32 (default), float16, int64, ... "
                                                     "for all inputs, or name:int64.")
INT_RANGE = typer.Option([], "--int-range", help="LOW,HIGH (inclusive) of integer inputs, "
                                                 "e.g. 0,30000 for token ids; or name:0,30000.")
FLOAT_RANGE = typer.Option([], "--float-range", help="LOW,HIGH of float inputs (uniform); "
                                                     "without it, standard normal.")
DYNAMIC = typer.Option(None, "--dynamic", help="Axes that vary: batch, or batch,seq.")
INPUTS = typer.Option(None, "--inputs", help="Real inputs (.npz, arrays named like the inputs) "
                                             "to verify on, besides random batches.")
ATOL = typer.Option([], "--atol", help="Absolute tolerance for every output, or OUTPUT=value.")
RTOL = typer.Option([], "--rtol", help="Tolerance relative to the output's scale "
                                       "(max |reference|), or OUTPUT=value.")


def input_options(shapes: list[str], dtypes: list[str], int_ranges: list[str],
                  float_ranges: list[str], dynamic: str | None,
                  npz: Path | None) -> InputOptions:
    from unfold.inputs import InputOptions

    return InputOptions(shapes=shapes, dtypes=dtypes, int_ranges=int_ranges,
                        float_ranges=float_ranges, dynamic=dynamic, npz=npz)


def progress(message: str) -> None:
    import sys

    print(f"[unfold] {message}", file=sys.stderr, flush=True)
