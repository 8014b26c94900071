"""Tolerances, explicit and per output (STYLE.md 9): an output passes when

    max |candidate - reference| <= atol + rtol * scale,   scale = max |reference|

i.e. `rtol` is relative to the output's scale (a logit vector of scale 20 may be off by
2e-4 in fp32), `atol` covers outputs that are all near zero. Defaults by the output's dtype;
`atol=1e-4` sets every output, `atol={"logits": 1e-4}` one of them (on the command line
`--atol 1e-4`, `--atol logits=1e-4`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unfold.errors import UnfoldError, option


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


Tolerances = float | Mapping[str, float] | None  # every output, or by output name


def check_tolerances(atol: Tolerances = None, rtol: Tolerances = None) -> None:
    """The tolerances' types and values, before any work (output names are checked once the
    model's outputs are known)."""
    _by_name("atol", atol, None)
    _by_name("rtol", rtol, None)


def _number(parameter: str, value: object, given: object) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, np.integer, np.floating)) \
            and not isinstance(value, bool) else None
    except OverflowError:  # (an int past float's range)
        number = None
    if number is None or not (np.isfinite(number) and number >= 0):
        raise UnfoldError(f"{option(parameter, given)}: a tolerance is a finite number >= 0 "
                          f"(e.g. {option(parameter, 1e-4)}), for every output or by output "
                          f"name (e.g. {option(parameter, {'logits': 1e-4})})")
    return number


def _by_name(parameter: str, value: Tolerances, output_names: Sequence[str] | None
             ) -> dict[str | None, float]:
    """{None: every output} or {output name: value}."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return {None: _number(parameter, value, value)}
    out: dict[str | None, float] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise UnfoldError(f"{option(parameter, dict(value))}: keys are output names (str), "
                              f"not {type(name).__name__}")
        out[name] = _number(parameter, item, {name: item})
        if output_names is not None and name not in output_names:
            raise UnfoldError(f"{option(parameter, {name: item})}: no output {name!r}; "
                              f"outputs: {', '.join(output_names)}")
    return out


def resolve_tolerances(output_dtypes: Mapping[str, np.dtype], atol: Tolerances = None,
                       rtol: Tolerances = None) -> dict[str, Tolerance]:
    """Per output: the default for its dtype, then `atol`/`rtol` for all, or by name."""
    names = list(output_dtypes)
    atols, rtols = _by_name("atol", atol, names), _by_name("rtol", rtol, names)
    tolerances = {}
    for name, dtype in output_dtypes.items():
        base = default_tolerance(dtype)
        tolerances[name] = Tolerance(atol=atols.get(name, atols.get(None, base.atol)),
                                     rtol=rtols.get(name, rtols.get(None, base.rtol)))
    return tolerances
