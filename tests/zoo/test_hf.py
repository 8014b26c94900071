"""Hugging Face architectures (tests/zoo/hf_cases.py: tiny configs, random weights, nothing
downloaded) swapped to UnifiedNorm, exported by both exporters and folded, held to their folded
no-norm twin: the checks of tests/zoo/twin_checks.py (the export matches torch; the fold keeps
the outputs; the twin's op counts but for a pending affine materialized at an output and the
case's documented extra ops; no twin op missing; no site left but the documented ones). The
dynamo half is `slow` (2.5-7.5 s a case against 0.4-3.5 s with TorchScript: about 35 s for
the eight cases against 13 s).

ALBERT shares one layer's weights across its layers: the fold must not copy a weight that
several nodes read unless it has to change it (`test_albert_*`).

Needs `transformers` (the `hf` extra); without it every test here skips, saying why."""

from __future__ import annotations

import pytest

from tests.optional import import_or_skip
from tests.zoo.twin_checks import (
    assert_check,
    checked,
    copy_bytes,
    initializer_bytes,
    new_copies,
    params,
)

try:
    from tests.zoo.hf_cases import HF_CASES
except Exception:  # transformers missing or broken: test_hf_cases_load says why
    HF_CASES = []

def test_hf_cases_load() -> None:
    """Skips where transformers does not import; fails where it does and hf_cases does not."""
    import_or_skip("transformers")
    import tests.zoo.hf_cases  # noqa: F401 - the error, if any, is the message


@pytest.mark.parametrize(("case", "exporter", "check"),
                         params(HF_CASES, slow=("dynamo",)))
def test_fold_like_the_twin(case, exporter, check) -> None:
    assert_check(check, checked(case, exporter))


# --- ALBERT: weights read by several nodes ------------------------------------------------------

# the folded twin may hold a little more than the export: constant subgraphs folded into
# initializers (dynamo: the token-type embedding rows gathered by constant ids, +304 bytes)
TWIN_GROWTH = 1.05


def _albert():
    import_or_skip("transformers")
    return next(c for c in HF_CASES if c.name == "hf_albert")


def _sizes(zoo) -> str:
    return (f"initializer bytes: export {initializer_bytes(zoo.original)}, folded "
            f"{initializer_bytes(zoo.folded)}; twin export {initializer_bytes(zoo.twin)}, "
            f"folded twin {initializer_bytes(zoo.folded_twin)}")


@pytest.mark.parametrize("exporter", [
    pytest.param("dynamo", marks=pytest.mark.slow),
    "torchscript",
])
def test_albert_twin_fold_keeps_weights_shared(exporter) -> None:
    """The twin has nothing to fold: its folded model holds no copy of a weight its export
    did not copy already, and hardly more bytes."""
    zoo = checked(_albert(), exporter)
    copied = new_copies(zoo.folded_twin, zoo.twin)
    grown = initializer_bytes(zoo.folded_twin) / initializer_bytes(zoo.twin)
    assert not copied and grown <= TWIN_GROWTH, (
        f"{exporter}: {copy_bytes(copied, zoo.twin)} bytes of new copies "
        f"{sorted(copied.values())}; folded twin {grown:.2f}x its export; {_sizes(zoo)}")


@pytest.mark.parametrize("exporter", [
    pytest.param("dynamo", marks=pytest.mark.slow),
    "torchscript",
])
def test_albert_fold_copies_only_what_it_changes(exporter) -> None:
    """The UN model's fold must change most shared weights layer by layer (a post-norm
    stream's pending scale compounds: layer 2's folded weights are not layer 1's), so its
    folded model grows; but no two of its initializers hold the same values unless the
    export had that copy already: a weight that several nodes read and the fold changes the
    same way for each stays one initializer."""
    zoo = checked(_albert(), exporter)
    copied = new_copies(zoo.folded, zoo.original)
    assert not copied, (
        f"{exporter}: {copy_bytes(copied, zoo.original)} bytes of new copies "
        f"{sorted(copied.values())}; {_sizes(zoo)}")
