"""A Hugging Face `save_pretrained` directory (config.json and model.safetensors, or its shards
with model.safetensors.index.json), the `hf` extra.

The model is built by transformers from config.json alone: the class its "architectures"
names, looked up in transformers itself (never `trust_remote_code`: no code from the
directory runs). Where the model was trained after `unfold.nn.swap_norms`, the config says so
(`SWAP_KEY`, written by swap_norms) and the same swap is applied before the weights go in,
so that the UN/PN statistics have somewhere to go. The weights come from safetensors only (a
pickle in a directory is refused: nobody vouched for it) and must fit exactly: every key of
the model but the tied ones (an output embedding sharing the input's), and nothing more.
transformers' own from_pretrained loads them (its checkpoint key conversions apply): on a
subclass that swaps the norms as it is built, so the statistics have somewhere to go.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unfold.errors import ExitCode, UnfoldError, option
from unfold.load.arch import named_keys, swap_hint
from unfold.nn import OfflineNorm, swap_norms
from unfold.nn.swap import SWAP_KEY  # what swap_norms records: {"kind": ..., "options": {}}
from unfold.norm_kinds import OFFLINE_KINDS

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
FORMAT = "Hugging Face directory"


def is_pretrained_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UnfoldError("a Hugging Face directory needs transformers: `pip install -e "
                          "\".[hf]\"` in this checkout (or `pip install transformers`)",
                          ExitCode.ENGINE_MISSING) from None
    return transformers


def _config_dict(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    try:
        described = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnfoldError(f"{path} is not a JSON file: {exc}") from None
    if not isinstance(described, dict):
        raise UnfoldError(f"{path} holds a JSON {type(described).__name__}, not a model "
                          f"configuration")
    return described


def _model_class(directory: Path, described: dict[str, Any], transformers: Any) -> Any:
    names = described.get("architectures") or []
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise UnfoldError(f"{directory / CONFIG} names no architecture (its \"architectures\" "
                          f"is {json.dumps(described.get('architectures'))}): save the model "
                          f"with model.save_pretrained(), which writes it")
    name = names[0]
    cls = getattr(transformers, name, None)
    base = getattr(transformers, "PreTrainedModel", None)
    if not (isinstance(cls, type) and base is not None and issubclass(cls, base)):
        custom = " (its config has an \"auto_map\": code of its own)" \
            if "auto_map" in described else ""
        raise UnfoldError(f"{directory / CONFIG} names the architecture {name}, which "
                          f"transformers {transformers.__version__} does not have{custom}; "
                          f"unfold builds only transformers' own classes and never runs a "
                          f"model's own code (trust_remote_code): give the weights with "
                          f"--arch pointing at a factory you trust instead")
    return cls


def _check_weights(directory: Path) -> None:
    """model.safetensors, or an index whose shards are files in `directory` (transformers
    reads them; this names what is missing before anything is built); a pickle is refused."""
    if (directory / WEIGHTS).is_file():
        return
    index = directory / SHARD_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnfoldError(f"{index} is not a safetensors index (a \"weight_map\" of "
                              f"shard file names): {type(exc).__name__}: {exc}") from None
        for name in files:
            shard = (directory / name).resolve()
            if not isinstance(name, str) or shard.parent != directory.resolve() or \
                    not shard.is_file():
                raise UnfoldError(f"{index} lists the shard {name!r}, which is not a file in "
                                  f"{directory}")
        return
    pickled = [name for name in PICKLED if (directory / name).exists()]
    if pickled:
        raise UnfoldError(f"{directory} holds its weights as a pickle ({pickled[0]}), which "
                          f"unfold does not load from a directory (loading it could run code "
                          f"from it): save with model.save_pretrained(dir) (safetensors, the "
                          f"default) and convert that")
    raise UnfoldError(f"{directory} has {CONFIG} but no weights: expected {WEIGHTS} (or "
                      f"{SHARD_INDEX} and its shards) beside it, as model.save_pretrained(dir) "
                      f"writes")


@contextlib.contextmanager
def _transformers_quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or load tables from transformers while it loads (unfold reports what
    matters, and refuses what does not fit)."""
    utils = transformers.utils.logging
    verbosity = utils.get_verbosity()
    bars = utils.is_progress_bar_enabled()
    utils.set_verbosity_error()
    utils.disable_progress_bar()
    try:
        yield
    finally:
        utils.set_verbosity(verbosity)
        if bars:
            utils.enable_progress_bar()


def _recorded_swap(directory: Path, described: dict[str, Any]) -> tuple[str, dict] | None:
    recorded = described.get(SWAP_KEY)
    if recorded is None:
        return None
    kind = recorded.get("kind") if isinstance(recorded, dict) else None
    options = recorded.get("options", {}) if isinstance(recorded, dict) else None
    if kind not in OFFLINE_KINDS or not isinstance(options, dict):
        raise UnfoldError(f"{directory / CONFIG}: \"{SWAP_KEY}\" must be {{\"kind\": one of "
                          f"{', '.join(OFFLINE_KINDS)}, \"options\": {{...}}}}, not "
                          f"{json.dumps(recorded)}")
    return kind, options


def _swapping(cls: type, kind: str, options: dict[str, Any]) -> type:
    """`cls` whose instances swap their norms as they are built: transformers' from_pretrained
    then loads the UN/PN statistics like any weight (its checkpoint key conversions
    included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]
        swap_norms(self, kind=kind, **options)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


def _load_problems(info: dict[str, Any]) -> list[str]:
    problems = []
    for key, what in (("missing_keys", "missing from the weights"),
                      ("unexpected_keys", "in the weights but not in the model"),
                      ("mismatched_keys", "of another shape in the weights")):
        keys = sorted(str(k) for k in info.get(key) or ())
        if keys:
            problems.append(f"{what}: {named_keys(keys)}")
    return problems


def load_pretrained_dir(directory: str | Path, *, swap: str | None = None
                        ) -> tuple[torch.nn.Module, list[str]]:
    """The model a `save_pretrained` directory holds, in eval mode, and notes on how it was
    built. `swap`: the offline norm to swap in where config.json records none (a model saved
    before swap_norms could record it). See the module docstring."""
    directory = Path(directory)
    transformers = _transformers()
    described = _config_dict(directory)
    cls = _model_class(directory, described, transformers)
    _check_weights(directory)  # (before building: a directory without them costs nothing)
    recorded = _recorded_swap(directory, described)
    if recorded is not None and swap is not None and swap != recorded[0]:
        raise UnfoldError(f"{option('swap', swap)}: {directory / CONFIG} records the swap to "
                          f"{recorded[0]}; leave {option('swap')} out")
    chosen = recorded or ((swap, {}) if swap is not None else None)
    target: Any = _swapping(cls, *chosen) if chosen is not None else cls
    try:
        with _transformers_quiet(transformers):
            model, info = target.from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True,
                trust_remote_code=False, output_loading_info=True)
    except Exception as exc:  # transformers' own refusal is the message
        text = str(exc).strip()
        raise UnfoldError(f"transformers could not build {cls.__name__} from {directory}: "
                          f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                          ) from None
    problems = _load_problems(info)
    if problems:
        hint = ""
        if chosen is None:
            unexpected = [str(k) for k in info.get("unexpected_keys") or ()]
            found = swap_hint(model, unexpected)
            hint = f"; {found}" if found else ""
        raise UnfoldError(f"{directory}'s weights do not fit the model its {CONFIG} "
                          f"describes ({'; '.join(problems)}){hint}")
    notes = [f"{cls.__name__} built by transformers {transformers.__version__} from "
             f"{directory}"]
    if chosen is not None:
        count = sum(isinstance(m, OfflineNorm) for m in model.modules())
        how = f"as {CONFIG} records" if recorded is not None else option("swap", swap)
        notes.append(f"{count} LayerNorm(s) swapped to {chosen[0]}, {how}")
    return model.eval(), notes


def main_input_name(model: torch.nn.Module) -> str | None:
    name = getattr(model, "main_input_name", None)
    return name if isinstance(name, str) else None


def default_shape(model: torch.nn.Module, name: str) -> tuple[tuple[int, ...], str,
                                                             tuple[float, float] | None,
                                                             dict[int, str]] | None:
    """(shape, dtype, value range, dynamic axes) for a model's main input, from its config:
    token ids (a batch of one sequence of 16, every id of the vocabulary), images at the
    config's size, audio features at the length the config fixes. None where it cannot say."""
    config = getattr(model, "config", None)
    if name == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 1:
            return None
        positions = getattr(config, "max_position_embeddings", None)
        length = min(16, positions) if isinstance(positions, int) and positions > 0 else 16
        return (1, length), "int64", (0, vocab - 1), {0: "batch", 1: "sequence"}
    if name == "pixel_values":
        size = getattr(config, "image_size", None)
        channels = getattr(config, "num_channels", 3)
        if isinstance(size, (list, tuple)) and len(size) == 2:
            height, width = size
        elif isinstance(size, int):
            height = width = size
        else:
            return None
        return (1, int(channels), int(height), int(width)), "float32", None, {0: "batch"}
    if name == "input_features":
        mels = getattr(config, "num_mel_bins", None)
        positions = getattr(config, "max_source_positions", None)
        if not isinstance(mels, int) or not isinstance(positions, int):
            return None
        return (1, mels, 2 * positions), "float32", None, {0: "batch"}
    return None
