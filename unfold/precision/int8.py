"""INT8 as TensorRT 11 takes it (explicit quantization: QuantizeLinear/DequantizeLinear pairs
in the graph, no calibrator in the builder), and as ONNX Runtime and OpenVINO run it.

`quantize_file` writes a static Q/DQ model of an ONNX file with ONNX Runtime's quantization
tool (the better kept of the two the issue names for standard Q/DQ: NNCF writes them too, but
as a second, torch-sized dependency; ONNX Runtime is one already), in the form TensorRT's
explicit quantization wants: int8 weights per output channel and int8 activations, both
symmetric (zero point 0), a Q/DQ pair on each weight, biases left in float. Calibration takes
the caller's inputs (`calibrate=data.npz`: arrays named like the model's inputs, split into
batches along axis 0); random inputs from the input specs only when asked for by count
(`random_calibration=N`), and the report says so.

Then the quantized model is checked against the fp32 one on the calibration inputs: INT8 is
not the fp32 model to a tolerance, so what is measured is each output's cosine similarity and
largest error relative to its scale, and the file is written only where the cosine of every
output reaches `min_cosine` (default 0.99) and every value is finite.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from unfold.errors import ExitCode, UnfoldError, check_paths, option
from unfold.inputs import InputSpec, load_npz, onnx_input_specs, random_batch, read_npz
from unfold.onnx_files import check_output_path, publish_file

CALIBRATION_BATCH = 16  # rows per calibration batch where the batch axis is dynamic
DEFAULT_MIN_COSINE = 0.99

Progress = Callable[[str], None]


@dataclass
class OutputAgreement:
    """One output of the INT8 model against the fp32 model, over the check's inputs."""

    name: str
    cosine: float
    max_abs: float
    scale: float  # max |fp32 output|
    finite: bool

    @property
    def relative(self) -> float:
        return self.max_abs / self.scale if self.scale else float(self.max_abs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cosine": self.cosine, "max_abs": self.max_abs,
                "scale": self.scale, "relative": self.relative, "finite": self.finite}


@dataclass
class QuantizeReport:
    source: str
    calibration: str  # what the scales came from
    calibration_batches: int
    random_calibration: bool
    min_cosine: float
    agreement: list[OutputAgreement] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)  # QuantizeLinear/DequantizeLinear count
    written: Path | None = None

    @property
    def agrees(self) -> bool:
        return all(a.finite and a.cosine >= self.min_cosine for a in self.agreement)

    def __bool__(self) -> bool:
        return self.written is not None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "calibration": self.calibration,
                "calibration_batches": self.calibration_batches,
                "random_calibration": self.random_calibration, "min_cosine": self.min_cosine,
                "agreement": [a.to_dict() for a in self.agreement], "agrees": self.agrees,
                "ops": self.ops, "written": str(self.written) if self.written else None}


def _check(model: Any, out: Any, calibrate: Any, random_calibration: Any,
           min_cosine: Any, batch_size: Any) -> None:
    check_paths(model=model, out=out)
    if (calibrate is None) == (random_calibration is None):
        raise UnfoldError(f"give {option('calibrate', 'data.npz')} (the model's inputs, as "
                          f"the data it will see) or, knowingly, "
                          f"{option('random_calibration', 8)} (scales from random inputs), "
                          f"one of them")
    if calibrate is not None and not isinstance(calibrate, (str, os.PathLike)):
        raise UnfoldError(f"{option('calibrate', calibrate)}: expected an .npz file path")
    if random_calibration is not None and (isinstance(random_calibration, bool) or not
                                           isinstance(random_calibration, int)
                                           or random_calibration < 1):
        raise UnfoldError(f"{option('random_calibration', random_calibration)}: expected a "
                          f"positive number of random batches")
    if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) or \
            not 0 < min_cosine <= 1:
        raise UnfoldError(f"{option('min_cosine', min_cosine)}: expected a number in (0, 1]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UnfoldError(f"{option('batch_size', batch_size)}: expected a positive number of "
                          f"rows per calibration batch")


def calibration_batches(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec],
                        batch_size: int) -> list[dict[str, np.ndarray]]:
    """The caller's arrays split along axis 0 into batches of `batch_size` rows where every
    input's axis 0 is dynamic; as one batch otherwise."""
    if not all(0 in spec.dynamic for spec in specs):
        return [dict(arrays)]
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise UnfoldError(f"{option('calibrate', '...')}: the arrays have different numbers "
                          f"of rows ({', '.join(f'{n}: {len(a)}' for n, a in arrays.items())})")
    total = rows.pop()
    return [{n: a[start:start + batch_size] for n, a in arrays.items()}
            for start in range(0, total, batch_size)]


def quantize_file(model: str | Path, out: str | Path, *, calibrate: str | Path | None = None,
                  random_calibration: int | None = None, batch_size: int = CALIBRATION_BATCH,
                  min_cosine: float = DEFAULT_MIN_COSINE, seed: int = 0, force: bool = False,
                  progress: Progress | None = None) -> QuantizeReport:
    """A static Q/DQ INT8 model of the ONNX file `model`, calibrated on `calibrate` (an .npz
    of the model's inputs) or on `random_calibration` random batches, checked against
    `model` on the calibration inputs, and written to `out` only where every output's cosine
    reaches `min_cosine`. `report.agrees` says whether it did."""
    from unfold.engines import runner_for
    from unfold.inputs import Inputs

    _check(model, out, calibrate, random_calibration, min_cosine, batch_size)
    model, say = Path(model), progress or (lambda message: None)
    if not model.is_file():
        raise UnfoldError(f"{model}: no such file")
    target = check_output_path(out, force=force, inputs=(model,))
    say(f"loading {model} ...")
    interface = onnx.load(str(model), load_external_data=False)
    if calibrate is not None:
        read_npz(calibrate, parameter="calibrate")  # (its errors named as what gave it)
        specs = onnx_input_specs(interface, Inputs(npz=calibrate))
        batches = calibration_batches(load_npz(calibrate, specs, parameter="calibrate"), specs,
                                      batch_size)
        described = f"{Path(calibrate).name}: {len(batches)} batches"
    else:
        assert random_calibration is not None
        specs = onnx_input_specs(interface, Inputs(), batch=batch_size, npz_helps=False)
        rng = np.random.default_rng(seed)
        batches = [random_batch(specs, rng) for _ in range(random_calibration)]
        described = (f"RANDOM inputs from the input specs ({random_calibration} batches): the "
                     f"scales fit random data, not the model's")
    del interface
    report = QuantizeReport(str(model), described, len(batches), calibrate is None,
                            float(min_cosine))

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as folder:
        quantized = Path(folder) / "int8.onnx"
        say(f"calibrating and quantizing ({report.calibration_batches} batches) ...")
        quantize_qdq(model, quantized, batches)
        graph = onnx.load(str(quantized), load_external_data=False).graph
        report.ops = {op: sum(n.op_type == op for n in graph.node)
                      for op in ("QuantizeLinear", "DequantizeLinear")}
        say("checking the INT8 model against the fp32 model ...")
        report.agreement = agreement(runner_for(model, "ort"), runner_for(quantized, "ort"),
                                     batches)
        if report.agrees:
            publish_file(quantized, target, force=force)
            report.written = target
    return report


def quantize_qdq(source: Path, out: Path, batches: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """ONNX Runtime's static quantization of `source` into `out`, calibrated (MinMax) on
    `batches`, in the form TensorRT's explicit quantization takes: QDQ, per-channel int8
    weights, int8 activations, both symmetric, a Q/DQ pair on each weight (its float copy
    kept), biases left float. No check: `quantize_file` adds it (`benchmarks/int8.py` too)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left: Iterator[Mapping[str, np.ndarray]] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.left, None)
            return None if batch is None else dict(batch)

    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False, "AddQDQPairToWeight": True,
                                       "DedicatedQDQPair": True})
    except Exception as exc:
        raise UnfoldError(f"ONNX Runtime's quantization tool failed on {source}: "
                          f"{type(exc).__name__}: {exc}", ExitCode.CHECK_FAILED) from None
    finally:
        prepared.unlink(missing_ok=True)
    return out


def agreement(reference: Any, candidate: Any, batches: Sequence[Mapping[str, np.ndarray]]
              ) -> list[OutputAgreement]:
    """Each output's cosine and largest error over all `batches` together (Runners; the
    measures are `verification.compare`'s, with a non-finite value on one side only as not
    finite)."""
    from unfold.verification.compare import compare_output
    from unfold.verification.tolerances import EXACT

    want: dict[str, list[np.ndarray]] = {}
    got: dict[str, list[np.ndarray]] = {}
    for feeds in batches:
        for name, value in reference.run(dict(feeds)).items():
            want.setdefault(name, []).append(np.asarray(value).ravel())
        for name, value in candidate.run(dict(feeds)).items():
            got.setdefault(name, []).append(np.asarray(value).ravel())
    rows = []
    for name in want:
        compared = compare_output(name, np.concatenate(want[name]), np.concatenate(got[name]),
                                  EXACT)
        finite = compared.problem is None
        rows.append(OutputAgreement(name, compared.cosine if finite else 0.0,
                                    compared.max_abs if finite else float("inf"),
                                    compared.scale, finite))
    return rows
