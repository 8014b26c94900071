"""Rebuilding an architecture for a state dict: `arch="package.module:factory"` with
`arch_kwargs={"dim": 384}` (`--arch`, `--arch-kwargs '{"dim": 384}'`), or the
`NAME.arch.json` that sits beside `NAME.state_dict.pt` (what the shipped samples carry). The
weights then go in by name, and every missing or unexpected key is reported by name."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from unfold.errors import UnfoldError, option

# wrappers whose prefix a saved state dict often carries (DDP, torch.compile)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_NAMED = 8


def check_arch_kwargs(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """The factory's keyword arguments: a mapping by parameter name (the CLI parses the JSON
    of --arch-kwargs into one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UnfoldError(f"{option('arch_kwargs', value)}: expected a mapping of keyword "
                          f"arguments by name, e.g. {option('arch_kwargs', {'dim': 384})}")
    return dict(value)


def split_arch(arch: str, origin: str | None = None) -> tuple[str, str]:
    """`package.module:factory` -> (module, factory name); `origin` names where it was given
    (the architecture file) in the error, the caller's own parameter by default."""
    origin = origin or option("arch")
    module_name, colon, attr = arch.partition(":") if isinstance(arch, str) else ("", "", "")
    if not colon or not module_name or not attr:
        raise UnfoldError(f"{origin} {arch!r}: expected package.module:factory, "
                          f"e.g. {option('arch', 'mypkg.models:vit_small')}")
    return module_name, attr


def import_factory(arch: str, origin: str | None = None) -> Any:
    """`package.module:factory` -> the callable (the working directory is importable, as
    for `python -m`)."""
    origin = origin or option("arch")
    module_name, attr = split_arch(arch, origin)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UnfoldError(f"{origin} {arch!r}: cannot import {module_name!r} ({exc}); "
                          f"is the package installed or in the working directory?") from None
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise UnfoldError(f"{origin} {arch!r}: {module_name} has no callable {attr!r}; "
                          f"it defines: {', '.join(names[:20]) or 'no public callables'}")
    return factory


def build_module(arch: str, kwargs: Mapping[str, Any], origin: str | None = None,
                 kwargs_origin: str | None = None) -> torch.nn.Module:
    """`origin` / `kwargs_origin`: where the architecture and its arguments came from (the
    caller's parameters by default, or the architecture file beside the weights), for the
    errors."""
    origin, kwargs_origin = origin or option("arch"), kwargs_origin or option("arch_kwargs")
    factory = import_factory(arch, origin)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise UnfoldError(f"{origin} {arch} with {kwargs_origin} {json.dumps(dict(kwargs))} "
                          f"failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise UnfoldError(f"{origin} {arch} returned a {type(module).__name__}, "
                          f"not a torch.nn.Module")
    return module


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def named_keys(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


# buffers of the offline norms (unfold.nn's, and the UN authors' UN1d) by the kind they say
OFFLINE_BUFFERS = {"running_var": "un", "forward_window": "un", "backward_window": "un",
                   "running_grad": "un", "num_outliers": "un", "buffer_x2": "un",
                   "buffer_gz": "un", "skip_counter": "un", "iters": "un",
                   "running_phi": "pn", "ema_gz": "un or pn"}


def swap_hint(module: torch.nn.Module, unexpected: list[str]) -> str | None:
    """Where the file's extra keys are offline-norm buffers on modules the architecture
    builds as LayerNorm: what to pass."""
    from unfold.nn.swap import layer_norm_channel_axis

    kinds, layer_norms = set(), []
    for key in unexpected:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in OFFLINE_BUFFERS:
            continue
        try:
            owner = module.get_submodule(prefix)
        except AttributeError:
            continue
        if layer_norm_channel_axis(owner) is not None:
            kinds.add(OFFLINE_BUFFERS[leaf])
            layer_norms.append(prefix)
    if not layer_norms:
        return None
    kind = "pn" if "pn" in kinds else "un"
    what = "PowerNorm" if kind == "pn" else "UnifiedNorm"
    return (f"the file holds {what} statistics on {len(set(layer_norms))} module(s) the "
            f"architecture builds as LayerNorm ({named_keys(sorted(set(layer_norms)))}): the "
            f"model was trained with unfold.nn.swap_norms; pass {option('swap', kind)}"
            + (f" (or {option('swap', 'pn*')} if it was PowerNorm without group scaling)"
               if kind == "pn" else ""))


def load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                 source: Path, arch: str, origin: str | None = None,
                 swapped: bool = False) -> None:
    """Every weight of the architecture from the state dict, and nothing left over. Where
    the extra keys say the norms were swapped (and `swapped` is False), the error says so."""
    origin = origin or option("arch")
    state = _strip_wrapper_prefix(state)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).split("\n", 1)[-1].strip()
        raise UnfoldError(f"{source} does not fit {origin} {arch}: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing from the file: {named_keys(list(result.missing_keys))}")
    if result.unexpected_keys:
        problems.append(f"in the file but not in the architecture: "
                        f"{named_keys(list(result.unexpected_keys))}")
    if problems:
        hint = None if swapped else swap_hint(module, list(result.unexpected_keys))
        if hint is not None:  # (the buffers it lists would only hide what to do)
            raise UnfoldError(f"{source} does not fit {origin} {arch}: {hint}")
        raise UnfoldError(f"{source} does not fit {origin} {arch} ({'; '.join(problems)}); "
                          f"check the architecture and its arguments")


def sidecar_arch(path: Path) -> Path | None:
    """`NAME.arch.json` beside `NAME.state_dict.pt` / `NAME.pt` / `NAME.pth`, if there."""
    stem = path.name
    for suffix in (".pt", ".pth", ".bin"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = stem.removesuffix(".state_dict")
    candidate = path.with_name(f"{stem}.arch.json")
    return candidate if candidate.is_file() else None
