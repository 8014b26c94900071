"""timm architectures (tests/zoo/timm_cases.py) swapped to offline norms, exported by both
exporters and folded, held to their folded no-norm twin: the checks of tests/zoo/twin_checks.py
(the export matches torch; the fold keeps the outputs; the twin's op counts but for a pending
affine materialized at an output and the case's documented extra ops; no twin op missing; no
site left but the documented ones). Needs the `zoo` extra with a torchvision that loads
(`.ci/zoo-timm` builds such an environment and runs `-m timm`); skips, with the reason, where
timm does not import. The dynamo half is also `slow` (`-m "timm and not slow"`: TorchScript
only)."""

from __future__ import annotations

import pytest

from tests.optional import import_or_skip
from tests.zoo.timm_cases import TIMM_CASES
from tests.zoo.twin_checks import assert_check, checked, params

pytestmark = pytest.mark.timm

XFAILS: dict[tuple[str, str, str], str] = {}  # (case, exporter, check): reason


@pytest.mark.parametrize(("case", "exporter", "check"),
                         params(TIMM_CASES, XFAILS, slow=("dynamo",)))
def test_fold_like_the_twin(case, exporter, check) -> None:
    import_or_skip("timm")
    assert_check(check, checked(case, exporter))
