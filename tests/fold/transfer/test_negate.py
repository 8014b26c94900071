"""negate: −(s⊙x + b) = s⊙(−x) − b. A norm before rotate_half's Neg (cat(−x2, x1)) passes it,
its shift negated, and folds into the MatMul after."""

from __future__ import annotations

from collections import Counter

import numpy as np
from onnx import helper

from unfold.fold import fold_model

from ..helpers import RNG, assert_same_outputs, const, model, norm_constants

N = helper.make_node
C = 8


def test_a_norm_passes_a_negation_into_the_linear_after() -> None:
    nodes = [N("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             N("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             N("Neg", ["n"], ["negated"], name="neg"),
             N("MatMul", ["negated", "W"], ["mm"], name="proj"),
             N("Add", ["mm", "c"], ["y"], name="proj_bias")]
    inits = [*norm_constants(C), const("W", RNG.normal(size=(C, 3))),
             const("c", RNG.normal(size=3))]
    original = model(nodes, inits, {"x": ["N", 5, C]}, {"y": ["N", 5, 3]})
    folded, report = fold_model(original)
    (site,) = report.sites
    assert site.status == "folded", site.reasons
    assert "moved past Neg 'neg'" in site.path
    assert Counter(n.op_type for n in folded.graph.node) == Counter(
        {"Neg": 1, "MatMul": 1, "Add": 1})
    assert_same_outputs(original, folded, {"x": RNG.normal(size=(2, 5, C)).astype(np.float32)})
