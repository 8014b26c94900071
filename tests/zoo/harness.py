"""Architectures nobody here wrote (Hugging Face, torch.nn, timm), swapped to UnifiedNorm,
exported, folded and measured against their no-norm twin (the same architecture, the same
weights, every norm an Identity), the twin folded the same way.

A `ZooCase` builds both models from one seed; `fold_case(case, exporter)` exports them, folds
both and returns what the tests assert on: the report, the op counts of each, and the folded
model's largest error against the unfolded export in ONNX Runtime, relative to the output's
scale (fp32: must be <= 1e-5)."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from unfold.fold import FoldReport, fold_model
from unfold.nn import PowerNorm, UnifiedNorm

EXPORTERS = ("dynamo", "torchscript")


def randomize_offline_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Untrained offline norms are near identity; give them real per-channel constants so a
    wrong fold cannot pass unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (UnifiedNorm, PowerNorm)):
                n = module.weight.numel()
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                stat = module.running_var if isinstance(module, UnifiedNorm) \
                    else module.running_phi
                stat.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
    return model


def norms_to_identity(model: nn.Module, kinds: tuple[type, ...] = (nn.LayerNorm,)) -> int:
    """The no-norm twin, in place: every module of `kinds` (LayerNorm and its subclasses by
    default) becomes an Identity. Returns how many."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, kinds):
                setattr(module, child_name, nn.Identity())
                count += 1
    return count


@dataclass(frozen=True)
class ZooCase:
    """One architecture. `build(twin)` returns the model in eval mode, built from the same seed
    either way: twin=False with its norms swapped to UnifiedNorm (statistics randomized),
    twin=True with them replaced by Identity. `example()` gives the positional inputs; the
    model's forward returns a tensor or a tuple of tensors."""

    name: str
    build: Callable[[bool], nn.Module]
    example: Callable[[], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    exporters: tuple[str, ...] = EXPORTERS
    dynamic_batch: bool = False
    # where no exact fold exists: the ops the folded model may have beyond its twin's, per
    # exporter ("*" for all), with the reason (the tests assert this minimum, not the twin)
    extra_ops: dict[str, Counter] = field(default_factory=dict)
    # how many sites the report may name as left (partial or stayed) there, per exporter ("*"
    # for all); `why_extra` says why
    left_sites: dict[str, int] = field(default_factory=dict)
    why_extra: str = ""


def export(model: nn.Module, args: tuple[torch.Tensor, ...], names: tuple[str, ...],
           exporter: str, dynamic_batch: bool = False) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dynamic = tuple({0: torch.export.Dim("batch")} for _ in args) \
                if dynamic_batch else None
            torch.onnx.export(model.eval(), args, buffer, dynamo=True, input_names=list(names),
                              dynamic_shapes=dynamic, verbose=False)
        elif exporter == "torchscript":
            torch.onnx.export(model.eval(), args, buffer, dynamo=False, input_names=list(names),
                              dynamic_axes={n: {0: "batch"} for n in names}
                              if dynamic_batch else None)
        else:
            raise ValueError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    return onnx.load_from_string(buffer.getvalue())


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def relative_error(original: onnx.ModelProto, folded: onnx.ModelProto,
                   feeds: dict[str, np.ndarray]) -> float:
    """max over outputs of max|Δ| / max|reference| (integer outputs must match exactly)."""
    return outputs_error(_run(original, feeds), _run(folded, feeds))


def outputs_error(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """max over outputs of max|Δ| / max|expected|; inf where the outputs do not even line up
    (count, shape) or an integer output differs."""
    if len(expected) != len(got):
        return float("inf")
    worst = 0.0
    for a, b in zip(expected, got, strict=True):
        if a.shape != b.shape:
            return float("inf")
        if not np.issubdtype(a.dtype, np.floating):
            worst = max(worst, 0.0 if np.array_equal(a, b) else np.inf)
            continue
        scale = max(float(np.abs(a).max()), 1e-30)
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()) / scale)
    return worst


@dataclass
class ZooResult:
    case: str
    exporter: str
    report: FoldReport
    ops: Counter[str]  # the folded model's
    twin_ops: Counter[str]  # the folded twin's
    error: float  # relative to the output scale, vs the unfolded export in ONNX Runtime

    @property
    def extra(self) -> Counter[str]:
        """Ops the folded model has beyond its twin (positive counts only)."""
        return self.ops - self.twin_ops

    @property
    def missing(self) -> Counter[str]:
        """Ops the twin has beyond the folded model (a fold never removes what the twin has)."""
        return self.twin_ops - self.ops


def fold_case(case: ZooCase, exporter: str) -> ZooResult:
    args = case.example()
    feeds = {name: t.numpy() for name, t in zip(case.input_names, args, strict=True)}
    original = export(case.build(False), args, case.input_names, exporter, case.dynamic_batch)
    folded, report = fold_model(original)
    twin = export(case.build(True), args, case.input_names, exporter, case.dynamic_batch)
    _, twin_report = fold_model(twin)
    return ZooResult(case.name, exporter, report, report.ops_after, twin_report.ops_after,
                     relative_error(original, folded, feeds))
