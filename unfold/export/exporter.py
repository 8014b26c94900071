"""The exporters themselves (torch, onnx): see the package's docstring."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from unfold.errors import UnfoldError, option
from unfold.export import EXPORTERS
from unfold.export.outputs import module_outputs
from unfold.inputs import InputSpec, random_batch
from unfold.load import LoadedModel


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
        raise UnfoldError(f"{option('exporter', exporter)}: valid: {', '.join(EXPORTERS)}")
    feeds = example_feeds(loaded, specs)
    # one torch run names the outputs and shows a wrong input shape before any export
    output_names = [name for name, _ in module_outputs(loaded.module, loaded.input_names, feeds,
                                                       by_keyword=loaded.by_keyword)]
    tensors = {name: torch.from_numpy(feeds[name]) for name in loaded.input_names}
    # inputs chosen among forward's optional parameters go by keyword
    args, kwargs = ((), tensors) if loaded.by_keyword else (tuple(tensors.values()), {})
    dynamic = {s.name: dict(s.dynamic) for s in specs if s.dynamic}
    is_script = isinstance(loaded.module, torch.jit.ScriptModule)
    if loaded.program is not None and exporter == "torchscript":
        raise UnfoldError(f"a torch.export program (.pt2) exports with the dynamo exporter "
                          f"only; use {option('exporter', 'auto')} or "
                          f"{option('exporter', 'dynamo')}")
    if exporter != "auto":
        order = [exporter]
    elif loaded.program is not None:
        order = ["dynamo"]
    elif is_script:  # the TorchScript exporter reads ScriptModules natively
        order = ["torchscript", "dynamo"]
    else:
        order = ["dynamo", "torchscript"]
    failures: list[str] = []
    for name in order:
        try:
            if name == "dynamo":
                model = _dynamo(loaded, args, kwargs, output_names, dynamic, opset)
            else:
                model = _torchscript(loaded.module, args, kwargs, loaded.input_names,
                                     output_names, dynamic, opset)
        except Exception as exc:
            failures.append(f"the {name} exporter failed: {_first_line(exc)}")
            continue
        reason = "; ".join(failures) or None
        if is_script and exporter == "auto" and name == "torchscript":
            reason = "a TorchScript archive: the TorchScript exporter reads it natively"
        return _result(model, name, reason, loaded, output_names)
    others = [e for e in EXPORTERS[1:] if e not in order and loaded.program is None]
    hint = f" (try {option('exporter', others[0])})" if others else ""
    raise UnfoldError("; ".join(failures) + hint)


def _dynamo(loaded: LoadedModel, args: tuple[torch.Tensor, ...],
            kwargs: dict[str, torch.Tensor], output_names: list[str],
            dynamic: dict[str, dict[int, str]], opset: int | None) -> onnx.ModelProto:
    with _quiet():
        source = loaded.program
        if source is None and isinstance(loaded.module, torch.jit.ScriptModule):
            # torch.onnx's dynamo path takes no ScriptModule: convert it to a program first
            from torch._export.converter import TS2EPConverter

            source = TS2EPConverter(loaded.module, args, kwargs or None).convert()
        if source is not None:
            program = torch.onnx.export(source, (), dynamo=True, verbose=False,
                                        output_names=output_names, opset_version=opset)
        else:
            program = torch.onnx.export(
                loaded.module, args, kwargs=kwargs or None, dynamo=True, verbose=False,
                input_names=loaded.input_names, output_names=output_names,
                dynamic_axes=dynamic or None, opset_version=opset)
    assert program is not None
    return program.model_proto


def _torchscript(module: torch.nn.Module, args: tuple[torch.Tensor, ...],
                 kwargs: dict[str, torch.Tensor], input_names: list[str], output_names: list[str],
                 dynamic: dict[str, dict[int, str]], opset: int | None) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(module, args, buffer, kwargs=kwargs or None,  # type: ignore[arg-type]
                          dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic or None, opset_version=opset or 17,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _result(model: onnx.ModelProto, exporter: str, reason: str | None, loaded: LoadedModel,
            output_names: list[str]) -> Exported:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = [i.name for i in model.graph.input]
    if loaded.program is None and inputs != loaded.input_names:
        if len(inputs) != len(loaded.input_names):
            raise UnfoldError(f"the {exporter} exporter made inputs {inputs} of the model's "
                              f"{loaded.input_names} (an input the model ignores is dropped)")
        _rename_inputs(model, dict(zip(inputs, loaded.input_names, strict=True)))
    return Exported(model, exporter, reason, opset, [i.name for i in model.graph.input],
                    [o.name for o in model.graph.output])


def _rename_inputs(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Graph inputs renamed (e.g. `images_1` -> `images`), with every reader, subgraphs
    included."""

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            node.input[:] = [names.get(n, n) for n in node.input]
            for attr in node.attribute:
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(sub)

    for value in model.graph.input:
        value.name = names.get(value.name, value.name)
    for value in model.graph.output:
        value.name = names.get(value.name, value.name)
    visit(model.graph)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, graph dumps of what failed and warnings; results own
    stdout here, progress owns stderr, and a failure is reported by its root cause."""
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name == "torch" or name.startswith("torch.")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    """The root cause's first line: torch.onnx wraps the telling error in generic ones."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
