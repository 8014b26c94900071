"""The normalization kinds by name, torch-free: the CLI and `unfold.bench` check a `swap`
before torch loads, and `unfold.nn.create_norm` builds them."""

from typing import Any

from unfold.errors import UnfoldError, option

NORM_KINDS = ("ln", "un", "pn", "pn*", "none")
# the offline ones: what `unfold.nn.swap_norms` puts in a LayerNorm's place
OFFLINE_KINDS = ("un", "pn", "pn*")


def check_swap(swap: Any) -> None:
    """`swap` (convert, verify, bench): None or one of the offline kinds."""
    if swap is not None and swap not in OFFLINE_KINDS:
        raise UnfoldError(f"{option('swap', swap)}: valid: {', '.join(OFFLINE_KINDS)} (the "
                          f"offline norm the model was trained with in place of LayerNorm)")
