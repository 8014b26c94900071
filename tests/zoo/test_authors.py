"""The UN authors' own models (tests/zoo/authors_cases.py: their UN1d's op sequence in T2T-ViT
and in fairseq's encoder/decoder layers, pre- and post-norm), exported by both exporters and
folded, held to their folded no-norm twin by the checks of tests/zoo/twin_checks.py. Their
UN1d wraps its affine in five layout ops; folded, none may stay (before, 2 Transposes and a
Reshape a norm did, and the report still said no_norm_left). T2T-ViT's qkv_bias=False leaves
one Add per attention: that minimum, and its reason, are asserted too."""

from __future__ import annotations

import pytest

from tests.zoo.authors_cases import AUTHORS_CASES
from tests.zoo.twin_checks import assert_check, checked, params
from unfold.fold.transfer.attention import QUERY_SHIFT

CASES = AUTHORS_CASES


@pytest.mark.parametrize(("case", "exporter", "check"), params(CASES))
def test_fold_like_the_twin(case, exporter, check) -> None:
    assert_check(check, checked(case, exporter))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_t2t_vit_leaves_only_the_bias_free_queries_shift(exporter) -> None:
    (t2t,) = [c for c in CASES if c.name == "t2t-vit"]
    zoo = checked(t2t, exporter)
    report = zoo.result.report
    assert dict(zoo.result.extra) == {"Add": 4}
    left = {site.label: site for site in report.left}
    assert set(left) == {"attention1.norm1", "attention2.norm1", "blocks.0.norm1",
                         "blocks.1.norm1"}, left
    for site in left.values():
        assert site.status == "partial" and site.absorbed_by
        assert any(QUERY_SHIFT in reason for reason in site.reasons), site.reasons
    assert not report.to_dict()["no_norm_left"]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_fairseq_layers_leave_no_layout_op_and_say_so(exporter) -> None:
    for case in CASES:
        if case.name.startswith("fairseq"):
            zoo = checked(case, exporter)
            assert not zoo.result.extra and not zoo.result.missing, zoo.describe()
            report = zoo.result.report
            assert report.to_dict()["no_norm_left"] is True
            assert all(not site.layout_left for site in report.sites)
