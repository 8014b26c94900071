"""Where two ONNX models part ways: every tensor both graphs compute under the same name is
made an output ("mark all", as polygraphy does), both run on the same inputs, and the first
node (in the candidate's topological order) whose output departs beyond tolerance is named.

Used when a folded model disagrees with its unfolded export. Note that the fold legitimately
rescales a few tensors (a post-norm residual stream carries its pending affine until the next
linear), so a departure reported on such a tensor is where to start looking, not proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from unfold.engines.ort import OrtRunner
from unfold.verification.compare import compare_output
from unfold.verification.tolerances import default_tolerance


@dataclass
class Divergence:
    node: str
    op_type: str
    tensor: str
    max_abs: float
    allowed: float
    compared: int  # how many shared tensors were compared before (and including) this one

    def describe(self) -> str:
        return (f"first departing node: {self.node} ({self.op_type}), output {self.tensor}: "
                f"max abs error {self.max_abs:.3g} > {self.allowed:.3g} allowed "
                f"({self.compared} shared tensors compared)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_divergence(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                     feeds: Mapping[str, np.ndarray]) -> Divergence | None:
    produced = {out for node in reference.graph.node for out in node.output if out}
    shared = [out for node in candidate.graph.node for out in node.output
              if out and out in produced]
    if not shared:
        return None
    ref_values = OrtRunner(reference, extra_outputs=shared).run(dict(feeds))
    cand_values = OrtRunner(candidate, extra_outputs=shared).run(dict(feeds))
    compared = 0
    for node in candidate.graph.node:
        for out in node.output:
            if out not in ref_values or out not in cand_values:
                continue
            compared += 1
            ref, cand = np.asarray(ref_values[out]), np.asarray(cand_values[out])
            result = compare_output(out, ref, cand, default_tolerance(ref.dtype))
            if not result:
                return Divergence(node.name or "(unnamed)", node.op_type, out, result.max_abs,
                                  result.allowed, compared)
    return None
