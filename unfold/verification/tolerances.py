"""Tolerances, explicit and per output (STYLE.md 9): an output passes when

    max |candidate - reference| <= atol + rtol * scale,   scale = max |reference|

i.e. `rtol` is relative to the output's scale (a logit vector of scale 20 may be off by
2e-4 in fp32), `atol` covers outputs that are all near zero. Defaults by the output's dtype;
`--atol 1e-4` sets every output, `--atol logits=1e-4` one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unfold.errors import UnfoldError


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def allowed(self, scale: float) -> float:
        return self.atol + self.rtol * scale


# fp32: ≲ 1e-5 relative to the output scale (README standards); half types: a few ulps of
# accumulated rounding; integers and booleans: exact
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-12, rtol=1e-10),
    "float32": Tolerance(atol=1e-6, rtol=1e-5),
    "float16": Tolerance(atol=1e-3, rtol=1e-2),
    "bfloat16": Tolerance(atol=1e-2, rtol=3e-2),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)


def default_tolerance(dtype: np.dtype | str) -> Tolerance:
    return DEFAULT_TOLERANCES.get(np.dtype(dtype).name, EXACT)


def check_tolerances(atol: Sequence[str] = (), rtol: Sequence[str] = ()) -> None:
    """The tolerances' syntax and values, before any work (output names are checked once the
    model's outputs are known)."""
    _parse("--atol", atol, None)
    _parse("--rtol", rtol, None)


def _parse(option: str, values: Sequence[str], output_names: Sequence[str] | None
           ) -> dict[str | None, float]:
    out: dict[str | None, float] = {}
    for value in values:
        name, eq, number = value.rpartition("=")
        try:
            parsed = float(number)
            assert parsed >= 0 and np.isfinite(parsed)
        except (ValueError, AssertionError):
            raise UnfoldError(f"{option} {value!r}: expected a number >= 0 (e.g. 1e-4) or "
                              f"OUTPUT=number (e.g. logits=1e-4)") from None
        if eq and output_names is not None and name not in output_names:
            raise UnfoldError(f"{option} {value!r}: no output {name!r}; outputs: "
                              f"{', '.join(output_names)}")
        out[name if eq else None] = parsed
    return out


def resolve_tolerances(output_dtypes: Mapping[str, np.dtype], atol: Sequence[str] = (),
                       rtol: Sequence[str] = ()) -> dict[str, Tolerance]:
    """Per output: the default for its dtype, then `--atol/--rtol` for all, then per name."""
    names = list(output_dtypes)
    atols, rtols = _parse("--atol", atol, names), _parse("--rtol", rtol, names)
    tolerances = {}
    for name, dtype in output_dtypes.items():
        base = default_tolerance(dtype)
        tolerances[name] = Tolerance(atol=atols.get(name, atols.get(None, base.atol)),
                                     rtol=rtols.get(name, rtols.get(None, base.rtol)))
    return tolerances
