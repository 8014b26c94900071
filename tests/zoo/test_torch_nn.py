"""torch.nn's own Transformers (tests/zoo/torch_cases.py: nn.TransformerEncoder and
nn.Transformer, pre- and post-norm, batch and sequence first) swapped to UnifiedNorm, exported
by both exporters and folded, held to their folded no-norm twin: the checks of
tests/zoo/twin_checks.py (the export matches torch; the fold keeps the outputs; the twin's op
counts but for a pending affine materialized at an output; no twin op missing; no site left).
The dynamo half is `slow` (2.6-9.5 s a case against 0.5-2.8 s with TorchScript: about 35 s
for the eight cases against 11 s)."""

from __future__ import annotations

import pytest

from tests.zoo.torch_cases import TORCH_CASES
from tests.zoo.twin_checks import assert_check, checked, params


@pytest.mark.parametrize(("case", "exporter", "check"), params(TORCH_CASES, slow=("dynamo",)))
def test_fold_like_the_twin(case, exporter, check) -> None:
    assert_check(check, checked(case, exporter))
