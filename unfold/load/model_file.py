"""model.pt in every format, recognised by its content (never by its name):

| format | how it loads | runs code from the file? |
|---|---|---|
| `torch.export` program (`.pt2`) | `torch.export.load`; carries its example inputs | no |
| TorchScript archive | `torch.jit.load` | no (TorchScript only) |
| state dict / training checkpoint | `torch.load(weights_only=True)` into `--arch` | no |
| pickled module (`torch.save(model)`) | `torch.load(weights_only=False)`, `--trust` only | YES |

Whatever the format, the result is an eval-mode module ready to run, with what is known of
its inputs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unfold.errors import UnfoldError, option
from unfold.inputs import (
    DTYPES,
    Inputs,
    InputSpec,
    read_npz,
    specs_from_arrays,
    specs_from_inputs,
)
from unfold.load.arch import (
    build_module,
    check_arch_kwargs,
    load_weights,
    sidecar_arch,
    split_arch,
)
from unfold.norm_kinds import OFFLINE_KINDS, check_swap

# a model the caller passes as an object (the Python API), not a file
IN_MEMORY = ("module in memory", "torch.export program in memory")
FORMATS = ("torch.export program", "TorchScript archive", "state dict", "training checkpoint",
           "pickled module", "Hugging Face directory", *IN_MEMORY)
# where training checkpoints keep the model's weights
CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "network",
                   "weights")


@dataclass
class LoadedModel:
    module: torch.nn.Module  # eval mode, ready to run
    source: Path
    format: str  # one of FORMATS
    input_names: list[str]  # the inputs it is called with, in forward's order
    program: torch.export.ExportedProgram | None = None  # a .pt2, exported as is
    # what the model says about its inputs (a .pt2's example inputs, an arch.json's "inputs")
    input_specs: list[InputSpec] = field(default_factory=list)
    example_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # forward's parameters with defaults (a Hugging Face model's attention_mask, ...): left
    # out unless given a shape; once chosen they join input_names
    optional_inputs: list[str] = field(default_factory=list)
    by_keyword: bool = False  # called as module(**inputs), not module(*inputs)

    def use_inputs(self, names: list[str]) -> None:
        """Call the model with `names` (in forward's order), by keyword where they are not a
        prefix of its parameters."""
        order = self.input_names + self.optional_inputs
        self.by_keyword = names != order[:len(names)]
        self.input_names = names

    @property
    def self_describing(self) -> bool:
        return bool(self.input_specs)

    def resolve_specs(self, inputs: Inputs) -> list[InputSpec]:
        """The inputs to export, verify or bench at: what the caller says (`inputs`) over what
        the model says of itself; the model is then called with those inputs."""
        defaults = list(self.input_specs)
        if not defaults and not inputs.shapes and inputs.npz:
            defaults = specs_from_arrays(read_npz(inputs.npz))
        specs = specs_from_inputs(self.input_names, inputs, optional_names=self.optional_inputs,
                                  defaults=defaults)
        self.use_inputs([spec.name for spec in specs])
        own_specs = {spec.name: spec for spec in self.input_specs}
        for spec in specs:
            own = own_specs.get(spec.name)
            if own is None:
                continue
            fixed = [i for i in range(len(own.shape)) if i not in own.dynamic]
            if len(spec.shape) != len(own.shape) or any(spec.shape[i] != own.shape[i]
                                                         for i in fixed):
                raise UnfoldError(f"{option('inputs.shapes', {spec.name: spec.shape})} does "
                                  f"not fit the model, which takes {own.describe()}")
        return specs


def load_model(path: str | Path, *, arch: str | None = None,
               arch_kwargs: Mapping[str, Any] | None = None,
               trust: bool = False, swap: str | None = None) -> LoadedModel:
    """`swap`: for weights loaded into `arch`, the offline norm ("un", "pn", "pn*") the model
    was trained with in place of the LayerNorms the factory builds (unfold.nn.swap_norms is
    applied to the factory's module before the weights go in)."""
    check_swap(swap)
    path = Path(path)
    if not path.exists():
        raise UnfoldError(f"{path}: no such file")
    if path.is_dir():
        from unfold.load.pretrained_dir import CONFIG, is_pretrained_dir

        if is_pretrained_dir(path):
            loaded = _load_pretrained(path, swap)
            for flag, value in (("arch", arch), ("arch_kwargs", arch_kwargs)):
                if value:
                    loaded.notes.append(f"{option(flag)} ignored: {path / CONFIG} describes "
                                        f"the model")
            return loaded
        raise UnfoldError(f"{path} is a directory without a {CONFIG}; give a model file (.pt, "
                          f".pt2, .pth) or a Hugging Face save_pretrained directory")
    if not path.is_file():
        from unfold.onnx_files import file_kind

        raise UnfoldError(f"{path} is not a regular file ({file_kind(path)}); give a model "
                          f"file (.pt, .pt2, .pth)")
    if path.stat().st_size == 0:
        raise UnfoldError(f"{path} is empty (0 bytes): not a model file")
    if _is_onnx(path):
        raise UnfoldError(f"{path} is an ONNX model, not a PyTorch one: `unfold convert` starts "
                          f"from the trained torch model; to fold an ONNX file, run `unfold fold "
                          f"{path} --out FOLDED.onnx`")
    kind = _sniff(path)
    if kind == "pt2":
        loaded = _load_program(path)
    elif kind == "torchscript":
        loaded = _load_torchscript(path)
    else:
        loaded = _load_pickle(path, arch=arch, arch_kwargs=arch_kwargs, trust=trust,
                              swap=swap)
    for flag, value in (("arch", arch), ("swap", swap)):
        if value and loaded.format not in ("state dict", "training checkpoint"):
            loaded.notes.append(f"{option(flag)} ignored: a {loaded.format} carries its "
                                f"architecture")
    return loaded


def _swapped(module: torch.nn.Module, swap: str, origin: str, arch: str) -> str:
    """swap_norms on a freshly built architecture; the note saying what it did."""
    from unfold.nn import swap_norms

    _, names = swap_norms(module, kind=swap)
    if not names:
        raise UnfoldError(f"{option('swap', swap)}: {origin} {arch} builds no LayerNorm to "
                          f"swap; leave {option('swap')} out if the weights are for it as it is")
    return f"{len(names)} LayerNorm(s) of {arch} swapped to {swap} ({option('swap', swap)})"


def is_model_object(model: Any) -> bool:
    """A model the caller holds (a module or a torch.export program), not a file."""
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


@contextlib.contextmanager
def held_model(model: Any, *, device: str = "cpu") -> Iterator[LoadedModel]:
    """A model the caller holds, as a LoadedModel for the work inside: the caller's module
    itself in eval mode, every submodule's own mode put back afterwards (nothing changes its
    parameters); on a GPU `device` a copy, since a runner moves what it runs there. A
    program's module has no modes (and refuses eval())."""
    loaded = load_object(model)
    if loaded.program is not None:
        yield loaded
        return
    with modes_kept(loaded.module):
        if device != "cpu":
            loaded.module = copy.deepcopy(loaded.module)
        yield loaded


def load_object(model: torch.nn.Module | torch.export.ExportedProgram) -> LoadedModel:
    """A model the caller holds (a training script's module, or a torch.export program), as a
    LoadedModel, the module used as it is (`held_model` is the way to use it)."""
    if isinstance(model, torch.export.ExportedProgram):
        loaded = _from_program(model, Path(f"<{IN_MEMORY[1]}>"), IN_MEMORY[1])
        return loaded
    if isinstance(model, torch.jit.ScriptModule):
        names = [a.name for a in model.forward.schema.arguments[1:]]  # type: ignore[attr-defined]
        return LoadedModel(model, Path(f"<{type(model).__name__} in memory>"), IN_MEMORY[0],
                           names)
    required, optional = _forward_names(model)
    return LoadedModel(model, Path(f"<{type(model).__name__} in memory>"), IN_MEMORY[0],
                       required, optional_inputs=optional)


@contextlib.contextmanager
def modes_kept(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the work inside; every submodule's own mode back afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def _is_onnx(path: Path) -> bool:
    """An ONNX file: a ModelProto, whose first field is its IR version (tag 0x08), with a
    graph. (A pickle starts 0x80, a zip PK.)"""
    with open(path, "rb") as file:
        if file.read(1) != b"\x08":
            return False
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(model.graph.node or model.graph.output)


def _sniff(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        return "pickle"  # the legacy torch.save format, or not a PyTorch file at all
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnfoldError(f"{path} is not a readable PyTorch file (damaged zip: {exc})") from None
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise UnfoldError(f"{path} is not a safe PyTorch archive: its member {name!r} "
                              f"points outside the archive (an absolute path or '..')")
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "pt2"
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's loaders log (tracebacks included) before they raise; the raise is what the user
    is told, in one line: their log stays out of it (--debug shows the exception)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _load_pretrained(path: Path, swap: str | None) -> LoadedModel:
    from unfold.load.pretrained_dir import (
        FORMAT,
        default_shape,
        load_pretrained_dir,
        main_input_name,
    )

    module, notes = load_pretrained_dir(path, swap=swap)
    required, optional = _forward_names(module)
    main = main_input_name(module)
    if main is not None and not required and main in optional:
        # (every forward parameter of a transformers model has a default: the main input
        # is the one it needs)
        required, optional = [main], [n for n in optional if n != main]
    loaded = LoadedModel(module, path, FORMAT, required, optional_inputs=optional, notes=notes)
    described = default_shape(module, main) if main is not None and main in required else None
    if main is not None and described is not None:
        shape, dtype, value_range, dynamic = described
        loaded.input_specs = [InputSpec(main, shape, dtype, value_range, dynamic)]
        loaded.notes.append(f"input {loaded.input_specs[0].describe()} (from the config)")
    return loaded


def _load_program(path: Path) -> LoadedModel:
    try:
        with _quiet_torch():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise UnfoldError(f"{path} looks like a torch.export program but does not load: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None
    return _from_program(program, path, "torch.export program")


def _from_program(program: torch.export.ExportedProgram, path: Path, fmt: str) -> LoadedModel:
    names = [spec.arg.name for spec in program.graph_signature.input_specs
             if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    loaded = LoadedModel(program.module(), path, fmt, names, program=program)
    args, kwargs = program.example_inputs or ((), {})
    flat = list(args) + [kwargs[k] for k in names[len(args):] if k in kwargs]
    if len(flat) == len(names) and all(isinstance(t, torch.Tensor) for t in flat):
        loaded.example_inputs = {n: t.detach().cpu().numpy()
                                 for n, t in zip(names, flat, strict=True)}
        loaded.input_specs = specs_from_arrays(loaded.example_inputs, _program_dynamic(program))
    return loaded


def _program_dynamic(program: torch.export.ExportedProgram) -> dict[str, dict[int, str]]:
    """Axis -> name for every symbolic input dimension; a symbol that is axis 0 of every
    input is the batch."""
    shapes = {node.name: node.meta["val"].shape for node in program.graph.nodes
              if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor)}
    user = [spec.arg.name for spec in program.graph_signature.input_specs
            if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    symbolic = {name: {axis: str(dim) for axis, dim in enumerate(shapes[name])
                       if not isinstance(dim, int)} for name in user if name in shapes}
    firsts = {axes.get(0) for axes in symbolic.values()}
    batch = firsts.pop() if len(firsts) == 1 else None
    return {name: {axis: "batch" if (axis == 0 and sym == batch) else f"{name}_{axis}"
                   for axis, sym in axes.items()}
            for name, axes in symbolic.items()}


def _load_torchscript(path: Path) -> LoadedModel:
    try:
        with _quiet_torch():  # (and TorchScript's deprecation notice)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UnfoldError(f"{path} looks like a TorchScript archive but does not load: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None
    names = [a.name for a in module.forward.schema.arguments[1:]]
    loaded = LoadedModel(module, path, "TorchScript archive", names)
    _to_eval(loaded)
    return loaded


def _load_pickle(path: Path, *, arch: str | None, arch_kwargs: Mapping[str, Any] | None,
                 trust: bool, swap: str | None) -> LoadedModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not needs:  # (torch's advice to set weights_only=False is no advice for this file)
            raise UnfoldError(f"{path} is not a PyTorch file (or is damaged or truncated): "
                              f"it does not unpickle") from None
        if not trust:
            raise UnfoldError(
                f"{path} is a pickled Python object (it names {needs[1]}); loading it runs "
                f"code from the file, so unfold does not do it unless told: pass "
                f"{option('trust', True)} if you trust where the file came from, or save the "
                f"weights instead (torch.save(model.state_dict(), ...)) and give "
                f"{option('arch')}") from None
        return _load_trusted(path)
    except EOFError:
        raise UnfoldError(f"{path} is not a PyTorch file (or is damaged or truncated): it ends "
                          f"before its data does") from None
    except Exception as exc:
        raise UnfoldError(f"{path} is not a PyTorch file (or is damaged or truncated): "
                          f"{_error_text(exc)}") from None
    state, fmt = _find_state_dict(obj, path)
    choice = _choose_arch(path, fmt, arch, arch_kwargs, trust)
    module = build_module(choice.arch, choice.kwargs, choice.origin, choice.kwargs_origin)
    swap = swap or choice.swap
    notes = [_swapped(module, swap, choice.origin, choice.arch)] if swap else []
    load_weights(module, state, source=path, arch=choice.arch, origin=choice.origin,
                 swapped=swap is not None)
    required, optional = _forward_names(module)
    loaded = LoadedModel(module, path, fmt, required, optional_inputs=optional)
    loaded.notes += choice.notes + notes
    if choice.arch_file is not None and "inputs" in choice.described:
        loaded.input_specs = _specs_from_arch_file(
            choice.described["inputs"], choice.arch_file, loaded.input_names
            + [n for n in loaded.optional_inputs if n in choice.described["inputs"]])
        loaded.notes.append(f"inputs from {choice.arch_file.name}")
    module.eval()  # freshly built, so in training mode: nothing to report
    return loaded


@dataclass
class _ArchChoice:
    arch: str
    kwargs: dict[str, Any]
    origin: str  # where `arch` came from, for messages: the flag or the file
    kwargs_origin: str
    arch_file: Path | None = None  # the architecture file whose inputs are used, if any
    described: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    swap: str | None = None  # the architecture file's "swap", if any


def _choose_arch(path: Path, fmt: str, arch: str | None,
                 arch_kwargs: Mapping[str, Any] | None, trust: bool) -> _ArchChoice:
    """The architecture to build for a state dict, and where it came from. An architecture file
    beside the weights names code to import, and it may have come with a download, like a
    pickle: its factory is imported only when the user vouches for it, with --trust or by
    giving the same arch. Its inputs (data, nothing that runs) are read either way."""
    arch_file = sidecar_arch(path)
    if arch_file is None:
        if arch is None:
            raise UnfoldError(
                f"{path} is a {fmt} (weights only): give the architecture with "
                f"{option('arch', 'package.module:factory')} (and {option('arch_kwargs')} for "
                f"its arguments), or put a {path.stem}.arch.json beside it")
        return _ArchChoice(arch, check_arch_kwargs(arch_kwargs), option("arch"),
                           option("arch_kwargs"))
    described = _read_arch_file(arch_file)
    named, named_kwargs = described["arch"], described.get("arch_kwargs", {})
    origin = f'{arch_file}\'s "arch"'
    if not isinstance(named_kwargs, dict):
        raise UnfoldError(f'{arch_file}: "arch_kwargs" must be a JSON object of keyword '
                          f"arguments, not {type(named_kwargs).__name__}")
    if arch is not None and arch != named:
        return _ArchChoice(arch, check_arch_kwargs(arch_kwargs), option("arch"),
                           option("arch_kwargs"),
                           notes=[f"{option('arch', arch)} given: {arch_file.name} (which "
                                  f"names {named}) ignored"])
    if arch is None and not trust:
        module_name, factory = split_arch(named, origin)
        call = f"{factory}(**{json.dumps(named_kwargs)})" if named_kwargs else f"{factory}()"
        raise UnfoldError(
            f"{arch_file} names the architecture {named}: building it would import "
            f"{module_name} and run {call}. A file beside the weights does not choose what "
            f"code runs unless you say so: pass {option('trust', True)} if you trust "
            f"{arch_file.name}, or give {option('arch', named)} yourself")
    if arch_kwargs is not None:
        kwargs, kwargs_origin = check_arch_kwargs(arch_kwargs), option("arch_kwargs")
    else:
        kwargs, kwargs_origin = dict(named_kwargs), f'{arch_file}\'s "arch_kwargs"'
    how = option("trust", True) if arch is None else f"confirmed by {option('arch')}"
    swap = described.get("swap")
    if swap is not None and swap not in OFFLINE_KINDS:
        raise UnfoldError(f'{arch_file}: "swap" must be one of {", ".join(OFFLINE_KINDS)}, not '
                          f"{json.dumps(swap)}")
    return _ArchChoice(named, kwargs, origin if arch is None else option("arch"), kwargs_origin,
                       arch_file, described,
                       notes=[f"architecture {named} from {arch_file.name} ({how})"], swap=swap)


def _load_trusted(path: Path) -> LoadedModel:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UnfoldError(f"{path} does not unpickle even with {option('trust', True)}: "
                          f"{type(exc).__name__}: {_first_line(exc)} (is the code that defined "
                          f"the model importable from here?)") from None
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), torch.nn.Module)),
                   obj)
    if not isinstance(obj, torch.nn.Module):
        raise UnfoldError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    required, optional = _forward_names(obj)
    loaded = LoadedModel(obj, path, "pickled module", required, optional_inputs=optional)
    loaded.notes.append(f"loaded with {option('trust', True)}: code from the file ran")
    _to_eval(loaded)
    return loaded


def _find_state_dict(obj: Any, path: Path) -> tuple[Mapping[str, torch.Tensor], str]:
    def is_state(value: Any) -> bool:
        return (isinstance(value, Mapping) and bool(value)
                and all(isinstance(v, torch.Tensor) for v in value.values()))

    if is_state(obj):
        return obj, "state dict"
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if is_state(obj.get(key)):
                return obj[key], "training checkpoint"
        keys = ", ".join(map(str, list(obj)[:12]))
        raise UnfoldError(f"{path} is a dict without model weights: its keys are {keys}; "
                          f"expected a state dict, or a checkpoint with the state dict under "
                          f"one of {', '.join(CHECKPOINT_KEYS)}")
    raise UnfoldError(f"{path} holds a {type(obj).__name__}; expected a state dict, a training "
                      f"checkpoint, a TorchScript archive or a torch.export program")


def _read_arch_file(path: Path) -> dict[str, Any]:
    try:
        described = json.loads(path.read_text())
        assert isinstance(described, dict) and isinstance(described.get("arch"), str)
    except (json.JSONDecodeError, AssertionError, OSError):
        raise UnfoldError(f"{path} is not an architecture file: expected JSON like "
                          f'{{"arch": "package.module:factory", "arch_kwargs": {{...}}}}') \
            from None
    return described


def _specs_from_arch_file(described: Any, path: Path, names: list[str]) -> list[InputSpec]:
    """`"inputs": {"images": {"shape": [2, 1, 8, 8], "dtype": "float32",
    "dynamic": {"0": "batch"}, "value_range": [0, 1]}}` -> specs."""
    try:
        specs = [InputSpec(name, tuple(int(d) for d in described[name]["shape"]),
                           described[name].get("dtype", "float32"),
                           tuple(described[name]["value_range"])  # type: ignore[arg-type]
                           if "value_range" in described[name] else None,
                           {int(a): str(n) for a, n in
                            described[name].get("dynamic", {}).items()})
                 for name in names]
        assert all(spec.dtype in DTYPES for spec in specs)
    except (KeyError, TypeError, ValueError, AssertionError):
        raise UnfoldError(f"{path}: its \"inputs\" must describe {', '.join(names)} as "
                          f'{{"shape": [...], "dtype": ..., "dynamic": {{"0": "batch"}}}}') \
            from None
    return specs


def _forward_names(module: torch.nn.Module) -> tuple[list[str], list[str]]:
    """forward's parameters that need a value, and those with a default."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return ([p.name for p in params if p.default is p.empty],
            [p.name for p in params if p.default is not p.empty])


def _to_eval(loaded: LoadedModel) -> None:
    training = sum(1 for m in loaded.module.modules() if m.training)
    if training:
        loaded.module.eval()
        loaded.notes.append(f"{training} module(s) were in training mode: switched to eval "
                            f"(offline norms use their learned statistics)")


def _error_text(exc: BaseException) -> str:
    """`Type: first line`, or just `Type` when it says nothing more (not "EOFError: EOFError")."""
    line = _first_line(exc)
    return type(exc).__name__ if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
