"""What the zoo tests (test_hf.py, test_torch_nn.py, test_timm.py) assert on each case x exporter,
on top of `harness.fold_case`'s measurements:

* `export`: the unfolded export computes what the torch model computes (the model run under
  `torch.no_grad()`, not `inference_mode`; the UN model and its twin both), within TOLERANCE of
  each output's largest |value|: a wrong export cannot hide behind a fold that copies it;
* `outputs` (a): the folded model computes what the unfolded export computes (`result.error`);
* `ops` (b): the folded op counts are the folded twin's, but for at most one Mul and one Add
  per graph output that a pending affine reaches (`materialized`: the Mul/Add by constants
  that end the path to each output, beyond the twin's there, as tests/fold/
  test_twin_properties.py counts them) and the case's documented `extra_ops`;
* `missing` (c): no op the folded twin has is missing (`result.missing` empty);
* `left` (d): the report names no site as left (partial or stayed), and no online norm, beyond
  the case's documented `left_sites`.

`checked(case, exporter)` exports, folds and measures once per case and exporter in a session
(the five checks share it); `params` turns cases into pytest parameters, the dynamo half marked
`slow` where asked, with the known failures as strict xfails.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.fold.helpers import materialized
from tests.zoo.harness import ZooCase, ZooResult, _run, export, outputs_error, relative_error
from unfold.fold import fold_model

TOLERANCE = 1e-5  # of each output's largest |value|, fp32
CHECKS = ("export", "outputs", "ops", "missing", "left", "replanned")




# --- weights -----------------------------------------------------------------------------------


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def copies(model: onnx.ModelProto) -> dict[tuple, list[str]]:
    """Initializers holding the same values (floating, more than one element: weights, not
    scalars or shape targets), grouped: {(dtype, shape, digest): [names]} for groups of 2+."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f" and array.size > 1:
            digest = hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()
            groups[(array.dtype.str, array.shape, digest)].append(tensor.name)
    return {key: names for key, names in groups.items() if len(names) > 1}


def new_copies(model: onnx.ModelProto, reference: onnx.ModelProto) -> dict[tuple, list[str]]:
    """The groups of `copies(model)` with more names than `reference` has of those values
    (copies the reference, an export, did not have already)."""
    before = copies(reference)
    return {key: names for key, names in copies(model).items()
            if len(names) > len(before.get(key, [None]))}


def copy_bytes(groups: Mapping[tuple, list[str]], reference: onnx.ModelProto | None = None
               ) -> int:
    """Bytes of the copies in `groups` beyond the first of each (beyond as many as
    `reference` has, where given)."""
    before = copies(reference) if reference is not None else {}
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
               * (len(names) - len(before.get((dtype, shape, digest), [None])))
               for (dtype, shape, digest), names in groups.items())


# --- one case x exporter, measured once --------------------------------------------------------


def _torch_outputs(model: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    # no_grad, not inference_mode: see torch_cases.py on nn.TransformerEncoderLayer's fast path
    with torch.no_grad():
        out = model(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach().numpy() for t in out]




@dataclass
class ZooCheck:
    """`harness.ZooResult` and what it leaves out: the four models and the export's error
    against torch."""

    case: ZooCase
    result: ZooResult
    original: onnx.ModelProto  # the UN model's export
    folded: onnx.ModelProto
    twin: onnx.ModelProto  # the twin's export
    folded_twin: onnx.ModelProto
    export_error: float  # the UN export vs the torch model, relative to the output scale
    twin_export_error: float  # the twin's export vs the twin
    seconds: float  # two exports, two folds, the torch and ONNX Runtime runs

    @property
    def exporter(self) -> str:
        return self.result.exporter

    @property
    def materialized(self) -> Counter[str]:
        return materialized(self.folded, self.folded_twin)

    @property
    def documented(self) -> Counter[str]:
        """The case's extra_ops for this exporter: its "*" entry plus its own."""
        ops = self.case.extra_ops
        return Counter(ops.get("*", {})) + Counter(ops.get(self.exporter, {}))

    @property
    def documented_left(self) -> int:
        sites = self.case.left_sites
        return sites.get("*", 0) + sites.get(self.exporter, 0)

    def describe(self) -> str:
        report = self.result.report
        left = [(s.name, s.status, s.reasons) for s in report.left]
        return (f"{self.case.name} [{self.exporter}]: folded - twin: +{dict(self.result.extra)} "
                f"-{dict(self.result.missing)}; materialized at outputs "
                f"{dict(self.materialized)}; documented {dict(self.documented)} "
                f"({self.case.why_extra or 'no reason given'}); sites left: {left}")


_CACHE: dict[tuple[str, str], ZooCheck | BaseException] = {}


def checked(case: ZooCase, exporter: str) -> ZooCheck:
    """The measurements of `case` exported by `exporter`, once per session (a failure too)."""
    key = (case.name, exporter)
    if key not in _CACHE:
        try:
            _CACHE[key] = _measure(case, exporter)
        except Exception as error:  # the same failure for every check of this pair
            _CACHE[key] = error
    found = _CACHE[key]
    if isinstance(found, BaseException):
        raise found
    return found


def _measure(case: ZooCase, exporter: str) -> ZooCheck:
    start = time.perf_counter()
    args = case.example()
    feeds = {name: t.numpy() for name, t in zip(case.input_names, args, strict=True)}
    exported = {}
    errors = {}
    for twin in (False, True):
        model = case.build(twin)
        expected = _torch_outputs(model, args)
        exported[twin] = export(model, args, case.input_names, exporter, case.dynamic_batch)
        errors[twin] = outputs_error(expected, _run(exported[twin], feeds))
    folded, report = fold_model(exported[False])
    folded_twin, twin_report = fold_model(exported[True])
    result = ZooResult(case.name, exporter, report, report.ops_after, twin_report.ops_after,
                       relative_error(exported[False], folded, feeds))
    return ZooCheck(case, result, exported[False], folded, exported[True], folded_twin,
                    errors[False], errors[True], time.perf_counter() - start)


# --- the checks --------------------------------------------------------------------------------


def assert_check(check: str, zoo: ZooCheck) -> None:
    """One of CHECKS on one case x exporter."""
    result, report = zoo.result, zoo.result.report
    if check == "export":
        assert zoo.export_error <= TOLERANCE and zoo.twin_export_error <= TOLERANCE, (
            f"{zoo.case.name} [{zoo.exporter}]: the export departs from the torch model by "
            f"{zoo.export_error:.3g} (UN model) / {zoo.twin_export_error:.3g} (twin) of the "
            f"output scale")
    elif check == "outputs":
        assert result.error <= TOLERANCE, (
            f"{zoo.case.name} [{zoo.exporter}]: folded output departs by {result.error:.3g} of "
            f"the output scale; {zoo.describe()}")
    elif check == "ops":
        allowed = zoo.materialized + zoo.documented
        over = {op: n - allowed[op] for op, n in result.extra.items() if n > allowed[op]}
        assert not over, f"ops beyond the allowed: {over}; {zoo.describe()}"
    elif check == "missing":
        assert not result.missing, f"ops the twin has, missing: {dict(result.missing)}; " \
                                   f"{zoo.describe()}"
    elif check == "left":
        left = [(s.name, s.status, s.reasons) for s in report.left]
        assert len(left) <= zoo.documented_left and not report.online, (
            f"{zoo.case.name} [{zoo.exporter}]: {len(left)} sites left (documented "
            f"{zoo.documented_left}: {zoo.case.why_extra or '-'}): {left}; online norms: "
            f"{report.online}")
    elif check == "replanned":
        assert not report.replanned, (
            f"{zoo.case.name} [{zoo.exporter}]: the rewrite could not make what the decision "
            f"priced: {report.replanned}")
    else:
        raise ValueError(f"unknown check {check!r}; valid: {', '.join(CHECKS)}")


def params(cases: Iterable[ZooCase], xfails: Mapping[tuple[str, str, str], str] | None = None,
           slow: Iterable[str] = ()) -> list:
    """pytest parameters (case, exporter, check) for every exporter of every case: those of
    the exporters in `slow` marked slow, those named in `xfails` ((case, exporter, check):
    reason) strict xfails. A key of `xfails` that names no parameter is an error."""
    xfails = xfails or {}
    slow = set(slow)
    out, seen = [], set()
    for case in cases:
        for exporter in case.exporters:
            for check in CHECKS:
                key = (case.name, exporter, check)
                seen.add(key)
                marks = [pytest.mark.slow] if exporter in slow else []
                if key in xfails:
                    marks.append(pytest.mark.xfail(strict=True, reason=xfails[key]))
                out.append(pytest.param(case, exporter, check, marks=marks,
                                        id=f"{case.name}-{exporter}-{check}"))
    unknown = set(xfails) - seen
    if unknown:
        raise ValueError(f"xfails for no test: {sorted(unknown)}")
    return out
