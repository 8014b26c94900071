"""Before an fp16 engine is built: which weights fp16 cannot hold as they are.

fp16 keeps 11 significant bits over a narrow range: the largest finite value is 65504, the
smallest normal 2^-14 (6.1e-5); below that a value is subnormal (fewer significant bits, down to
2^-24, 6.0e-8) and below half of 2^-24 it rounds to zero. A weight past either end does not
make a build fail: the engine just computes with other numbers. So each float initializer's
range is measured here and every one outside fp16's is named, with its largest |value| and its
smallest non-zero |value|, before any build.

bf16 is the alternative: fp32's exponent range (largest 3.4e38, smallest normal 1.2e-38), so no
such overflow or underflow, but 8 significant bits instead of fp16's 11 (a relative rounding
error of up to 2^-8 = 0.39% instead of 2^-11 = 0.049%). The report says which of the weights
named would fit bf16.

numpy and onnx only (no TensorRT): it runs, and is tested, anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.numpy_helper

from unfold.numerics import (
    BF16_MAX,
    BF16_SIGNIFICANT_BITS,
    BF16_SMALLEST_NORMAL,
    FP16_MAX,
    FP16_SIGNIFICANT_BITS,
    FP16_SMALLEST_NORMAL,
    FP16_SMALLEST_SUBNORMAL,
)

if TYPE_CHECKING:
    from unfold.model_parts import ModelParts


# the ONNX types whose values change when an engine computes in fp16 (fp16 weights already are
# what they are; integers are not converted)
_CHECKED_TYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "float32",
                                  onnx.TensorProto.DOUBLE: "float64",
                                  onnx.TensorProto.BFLOAT16: "bfloat16"}
_CHECKED_DTYPES = frozenset(_CHECKED_TYPES.values())

# warnings printed at most for this many weights (the JSON report names all)
MAX_WARNINGS = 20


@dataclass(frozen=True)
class WeightRange:
    """One float initializer whose values fp16 cannot hold as they are."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs: float
    min_abs_nonzero: float | None  # None: every value is 0
    overflow: int  # values with |v| > 65504: past fp16's largest finite value
    subnormal: int  # non-zero values with |v| < 2^-14: fewer significant bits in fp16
    to_zero: int  # non-zero values with |v| <= 2^-25: fp16 rounds them to 0 (among `subnormal`)

    @property
    def fits_bf16(self) -> bool:
        """bf16 holds the range of these values (at its 8 significant bits)."""
        return self.max_abs <= BF16_MAX and (self.min_abs_nonzero is None
                                             or self.min_abs_nonzero >= BF16_SMALLEST_NORMAL)

    def describe(self) -> str:
        """`initializer 'fc.weight' (float32 8x4): max |value| 1e+05 is past fp16's largest
        65504 (3 values)`, and/or the same for the smallest non-zero |value|."""
        shape = "x".join(map(str, self.shape)) or "scalar"
        problems = []
        if self.overflow:
            problems.append(f"max |value| {self.max_abs:.3g} is past fp16's largest {FP16_MAX:g} "
                            f"({self.overflow} value{'s' if self.overflow != 1 else ''})")
        if self.subnormal:
            zero = f", of which {self.to_zero} would be 0" if self.to_zero else ""
            problems.append(f"smallest non-zero |value| {self.min_abs_nonzero:.3g} is below "
                            f"fp16's smallest normal {FP16_SMALLEST_NORMAL:.2g} ({self.subnormal} "
                            f"value{'s' if self.subnormal != 1 else ''} subnormal in fp16{zero})")
        return f"initializer {self.name!r} ({self.dtype} {shape}): {'; '.join(problems)}"


@dataclass
class Fp16RangeReport:
    """Every float initializer outside fp16's range; true when there is none."""

    checked: int = 0  # float initializers measured (fp32, fp64, bf16)
    weights: list[WeightRange] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.weights

    @property
    def overflowing(self) -> list[WeightRange]:
        return [w for w in self.weights if w.overflow]

    @property
    def subnormal(self) -> list[WeightRange]:
        return [w for w in self.weights if w.subnormal]

    def warnings(self, *, bf16: bool = False, limit: int = MAX_WARNINGS) -> list[str]:
        """One line per weight (up to `limit`, then how many more), and what --bf16 would
        change (`bf16`: it is given too); nothing when every weight fits fp16."""
        if not self.weights:
            return []
        lines = [f"--fp16: {w.describe()}" for w in self.weights[:limit]]
        if len(self.weights) > limit:
            lines.append(f"--fp16: and {len(self.weights) - limit} more initializers outside "
                         f"fp16's range (--json lists them all)")
        lines.append(f"--fp16: float initializers past fp16's largest value: "
                     f"{len(self.overflowing)} of {self.checked}, with values below its smallest "
                     f"normal: {len(self.subnormal)}; {self.bf16_note(given=bf16)}")
        return lines

    def bf16_note(self, *, given: bool = False) -> str:
        """What --bf16 would change for the weights named (`given`: it is given with --fp16,
        and TensorRT picks per layer, fp16 where that is faster)."""
        unfit = [w.name for w in self.weights if not w.fits_bf16]
        held = "would hold all of them" if not unfit else \
            f"would hold all but {', '.join(map(repr, unfit))} (outside bf16's range too)"
        if given:
            held = (f"without --fp16 {held}; with both, TensorRT may still run a layer that "
                    f"reads them in fp16")
        return (f"bf16 has fp32's range (largest {BF16_MAX:.3g}, smallest normal "
                f"{BF16_SMALLEST_NORMAL:.3g}) at {BF16_SIGNIFICANT_BITS} significant bits to "
                f"fp16's {FP16_SIGNIFICANT_BITS} (relative rounding up to "
                f"{2.0**-BF16_SIGNIFICANT_BITS:.2%} instead of "
                f"{2.0**-FP16_SIGNIFICANT_BITS:.3%}): --bf16 {held}")

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "fits_fp16": bool(self),
                "weights": [{**asdict(w), "shape": list(w.shape), "fits_bf16": w.fits_bf16}
                            for w in self.weights]}


def _float_weights(model: onnx.ModelProto | ModelParts
                   ) -> Iterator[tuple[str, str, np.ndarray]]:
    """(name, dtype, values) of each initializer of a checked float type, read one at a
    time (a TensorProto's values are decoded only when its type is one of them)."""
    weights: Mapping[str, onnx.TensorProto | np.ndarray] = (
        {t.name: t for t in model.graph.initializer} if isinstance(model, onnx.ModelProto)
        else model.weights)
    for name, weight in weights.items():
        if isinstance(weight, onnx.TensorProto):
            if weight.data_type not in _CHECKED_TYPES:
                continue
            yield name, _CHECKED_TYPES[weight.data_type], onnx.numpy_helper.to_array(weight)
        elif np.dtype(weight.dtype).name in _CHECKED_DTYPES:
            yield name, np.dtype(weight.dtype).name, weight


def weight_range(name: str, dtype: str, values: np.ndarray) -> WeightRange | None:
    """The range of one weight, or None when fp16 holds it (or it is empty)."""
    if not values.size:
        return None
    magnitude = np.abs(values if values.dtype == np.float64 else values.astype(np.float32))
    max_abs = float(magnitude.max())
    nonzero = magnitude[magnitude > 0]
    min_abs_nonzero = float(nonzero.min()) if nonzero.size else None
    overflow = int(np.count_nonzero(magnitude > FP16_MAX))
    subnormal = int(np.count_nonzero(nonzero < FP16_SMALLEST_NORMAL))
    if not overflow and not subnormal:
        return None
    to_zero = int(np.count_nonzero(nonzero <= FP16_SMALLEST_SUBNORMAL / 2))
    return WeightRange(name, dtype, tuple(values.shape), max_abs, min_abs_nonzero, overflow,
                       subnormal, to_zero)


def fp16_range_report(model: onnx.ModelProto | ModelParts) -> Fp16RangeReport:
    """Every float initializer of `model` (a ModelProto, or `unfold.onnx_files` parts) whose
    largest |value| is past fp16's 65504 or whose smallest non-zero |value| is below fp16's
    smallest normal 6.1e-5, in the model's order."""
    report = Fp16RangeReport()
    for name, dtype, values in _float_weights(model):
        report.checked += 1
        found = weight_range(name, dtype, values)
        if found is not None:
            report.weights.append(found)
    return report
