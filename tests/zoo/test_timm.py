"""timm architectures (tests/zoo/timm_cases.py) swapped to offline norms, exported, folded: the
folded model computes what the unfolded export computes. Op counts against the no-norm twin
are not asserted yet. Needs the `zoo` extra with a torchvision that loads (`.ci/zoo-timm`
builds such an environment); skips, with the reason, where timm does not import."""

from __future__ import annotations

import pytest

from tests.optional import import_or_skip
from tests.zoo.harness import fold_case
from tests.zoo.timm_cases import TIMM_CASES

pytestmark = pytest.mark.timm

PAIRS = [(case, exporter) for case in TIMM_CASES for exporter in case.exporters]


@pytest.mark.parametrize(("case", "exporter"), PAIRS,
                         ids=[f"{case.name}-{exporter}" for case, exporter in PAIRS])
def test_fold_keeps_outputs(case, exporter) -> None:
    import_or_skip("timm")
    result = fold_case(case, exporter)
    assert result.error <= 1e-5, (
        f"{case.name} ({exporter}): folded output departs by {result.error:.3g} of the output "
        f"scale; left: {[(s.name, s.reasons) for s in result.report.left]}")
