"""torch -> ONNX: torch.onnx's dynamo exporter by default, the TorchScript exporter as a
fallback (or on request); the result says which ran and why.

    exported = unfold.export.export_onnx(loaded, specs)          # specs: unfold.inputs
    exported.model, exported.exporter, exported.fallback_reason

A `torch.export` program (`.pt2`) is exported as it is, with its own dynamic dimensions; other
models are exported at the specs' shapes, with the specs' dynamic axes. The exporters' own
chatter (prints, warnings, log lines) is kept off stdout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from unfold.engines.torch_runner import TorchRunner
from unfold.errors import UnfoldError
from unfold.inputs import InputSpec, random_batch
from unfold.load import LoadedModel

EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class Exported:
    model: onnx.ModelProto
    exporter: str  # "dynamo" or "torchscript": the one that produced `model`
    fallback_reason: str | None  # why the default did not run, if it did not
    opset: int
    input_names: list[str]
    output_names: list[str]


def example_feeds(loaded: LoadedModel, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """The model's own example inputs when they fit the specs, else a random batch."""
    if loaded.example_inputs and all(
            loaded.example_inputs[s.name].shape == s.shape
            and loaded.example_inputs[s.name].dtype.name == s.dtype for s in specs):
        return dict(loaded.example_inputs)
    return random_batch(specs, np.random.default_rng(0))


def export_onnx(loaded: LoadedModel, specs: Sequence[InputSpec], *, exporter: str = "auto",
                opset: int | None = None) -> Exported:
    if exporter not in EXPORTERS:
        raise UnfoldError(f"--exporter {exporter!r}: valid: {', '.join(EXPORTERS)}")
    feeds = example_feeds(loaded, specs)
    # one torch run names the outputs and shows a wrong input shape before any export
    output_names = list(TorchRunner(loaded.module, loaded.input_names).run(feeds))
    args = tuple(torch.from_numpy(feeds[name]) for name in loaded.input_names)
    dynamic = {s.name: dict(s.dynamic) for s in specs if s.dynamic}
    is_script = isinstance(loaded.module, torch.jit.ScriptModule)
    reason = None
    if loaded.program is not None and exporter == "torchscript":
        raise UnfoldError("a torch.export program (.pt2) exports with the dynamo exporter only; "
                          "use --exporter auto or dynamo")
    if exporter == "auto" and is_script:
        exporter, reason = "torchscript", "a TorchScript archive: the dynamo exporter takes " \
                                          "nn.Modules and torch.export programs"
    if exporter in ("auto", "dynamo"):
        try:
            model = _dynamo(loaded, args, output_names, dynamic, opset)
            return _result(model, "dynamo", None, loaded, output_names)
        except Exception as exc:
            if exporter == "dynamo" or loaded.program is not None:
                raise UnfoldError(f"the dynamo exporter failed: {_first_line(exc)} "
                                  f"(try --exporter torchscript)") from None
            reason = f"the dynamo exporter failed: {_first_line(exc)}"
    try:
        model = _torchscript(loaded.module, args, loaded.input_names, output_names, dynamic,
                             opset)
    except Exception as exc:
        detail = f"; before that, {reason}" if reason else ""
        raise UnfoldError(f"the TorchScript exporter failed: {_first_line(exc)}{detail}") \
            from None
    return _result(model, "torchscript", reason, loaded, output_names)


def _dynamo(loaded: LoadedModel, args: tuple[torch.Tensor, ...], output_names: list[str],
            dynamic: dict[str, dict[int, str]], opset: int | None) -> onnx.ModelProto:
    with _quiet():
        if loaded.program is not None:
            program = torch.onnx.export(loaded.program, (), dynamo=True, verbose=False,
                                        output_names=output_names, opset_version=opset)
        else:
            program = torch.onnx.export(
                loaded.module, args, dynamo=True, verbose=False,
                input_names=loaded.input_names, output_names=output_names,
                dynamic_axes=dynamic or None, opset_version=opset)
    assert program is not None
    return program.model_proto


def _torchscript(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                 input_names: list[str], output_names: list[str],
                 dynamic: dict[str, dict[int, str]], opset: int | None) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, args, buffer,  # type: ignore[arg-type]
                          dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic or None, opset_version=opset or 17,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _result(model: onnx.ModelProto, exporter: str, reason: str | None, loaded: LoadedModel,
            output_names: list[str]) -> Exported:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = [i.name for i in model.graph.input]
    if loaded.program is None and inputs != loaded.input_names:
        raise UnfoldError(f"the {exporter} exporter named the inputs {inputs}, expected "
                          f"{loaded.input_names} (an input the model ignores is dropped)")
    return Exported(model, exporter, reason, opset, inputs, [o.name for o in model.graph.output])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress to stdout and log warnings; results own stdout here."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
