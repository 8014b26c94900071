"""unfold.load: every model.pt format recognised by content and loaded in eval mode; a pickled
module never unpickled without --trust; every bad file a clear UnfoldError."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from sample_models.registry import CHECKPOINT_DIR
from tests.models import VIT_INPUT, tiny_vit
from unfold.errors import UnfoldError
from unfold.load import load_model

ARCH = "tests.models:tiny_vit"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    model = tiny_vit()
    x = torch.rand(*VIT_INPUT)
    paths = {name: root / f"{name}.pt" for name in
             ("state", "checkpoint", "ddp", "script", "pickled", "training")}
    torch.save(model.state_dict(), paths["state"])
    torch.save({"model": model.state_dict(), "epoch": 3, "lr": 0.1}, paths["checkpoint"])
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, paths["ddp"])
    torch.jit.save(torch.jit.trace(model, (x,)), paths["script"])
    torch.save(model, paths["pickled"])
    torch.save(tiny_vit().train(), paths["training"])
    return paths


def _expected(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny_vit()(x)


@pytest.mark.parametrize(("name", "fmt", "kwargs"), [
    ("state", "state dict", {"arch": ARCH}),
    ("checkpoint", "training checkpoint", {"arch": ARCH}),
    ("ddp", "state dict", {"arch": ARCH, "arch_kwargs": {"dim": 32}}),
    ("script", "TorchScript archive", {}),
    ("pickled", "pickled module", {"trust": True}),
])
def test_each_format_loads_the_same_model_in_eval_mode(files: dict[str, Path], name: str,
                                                       fmt: str, kwargs: dict) -> None:
    loaded = load_model(files[name], **kwargs)
    assert loaded.format == fmt
    assert loaded.input_names in (["images"], ["x"]), loaded.input_names
    assert not any(m.training for m in loaded.module.modules())
    x = torch.rand(*VIT_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), _expected(x), rtol=0, atol=1e-6)


def test_a_torch_export_program_carries_its_inputs() -> None:
    loaded = load_model(CHECKPOINT_DIR / "numbers-enfr-un.pt2")
    assert loaded.format == "torch.export program" and loaded.program is not None
    assert loaded.input_names == ["src_tokens", "prev_output_tokens"]
    src, prev = loaded.input_specs
    assert src.dtype == "int64" and src.dynamic[0] == "batch" and 1 in src.dynamic
    assert prev.dynamic[0] == "batch"
    assert loaded.example_inputs["src_tokens"].shape == src.shape


def test_a_state_dict_finds_its_arch_json_beside_it() -> None:
    loaded = load_model(CHECKPOINT_DIR / "digits-vit-un.state_dict.pt", trust=True)
    assert loaded.format == "state dict"
    (spec,) = loaded.input_specs
    assert (spec.shape, spec.value_range, dict(spec.dynamic)) == \
        ((2, 1, 8, 8), (0.0, 1.0), {0: "batch"})
    assert loaded.notes[0] == ("architecture sample_models.vit:digits_vit from "
                               "digits-vit-un.arch.json (trust=True)")


def _weights_with_arch_file(tmp_path: Path, arch: str, kwargs: dict) -> Path:
    weights = tmp_path / "w.pt"
    torch.save(tiny_vit().state_dict(), weights)
    (tmp_path / "w.arch.json").write_text(json.dumps({"arch": arch, "arch_kwargs": kwargs}))
    return weights


def test_an_arch_json_imports_nothing_without_trust(tmp_path: Path) -> None:
    """The file beside the weights may have come with them from a download: what it names is
    imported and called only when the user vouches for it (it could name os:mkdir)."""
    made = tmp_path / "made_by_the_file"
    weights = _weights_with_arch_file(tmp_path, "os:mkdir", {"path": str(made)})
    with pytest.raises(UnfoldError) as info:
        load_model(weights)
    message = str(info.value)
    assert f"{tmp_path / 'w.arch.json'} names the architecture os:mkdir" in message
    assert f'would import os and run mkdir(**{{"path": "{made}"}})' in message
    assert "pass trust=True" in message and "give arch='os:mkdir' yourself" in message
    assert not made.exists(), "nothing the file names ran"


def test_with_trust_an_arch_json_runs_and_its_errors_name_the_file(tmp_path: Path) -> None:
    made = tmp_path / "made_by_the_file"
    weights = _weights_with_arch_file(tmp_path, "os:mkdir", {"path": str(made)})
    with pytest.raises(UnfoldError, match=r'w\.arch\.json\'s "arch" os:mkdir returned a '
                                          r"NoneType, not a torch.nn.Module"):
        load_model(weights, trust=True)
    assert made.is_dir(), "trusted: it ran"
    _weights_with_arch_file(tmp_path, ARCH, {"depth": 3})
    with pytest.raises(UnfoldError, match=r'w\.arch\.json\'s "arch" tests.models:tiny_vit '
                                          r'with .*w\.arch\.json\'s "arch_kwargs" '
                                          r'\{"depth": 3\} failed'):
        load_model(weights, trust=True)


def test_the_same_arch_on_the_command_line_confirms_the_file(tmp_path: Path) -> None:
    weights = _weights_with_arch_file(tmp_path, ARCH, {"dim": 32})
    loaded = load_model(weights, arch=ARCH)
    assert loaded.notes == [f"architecture {ARCH} from w.arch.json (confirmed by arch)"]
    x = torch.rand(*VIT_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), _expected(x), rtol=0, atol=1e-6)


def test_another_arch_on_the_command_line_ignores_the_file(tmp_path: Path) -> None:
    weights = _weights_with_arch_file(tmp_path, "os:mkdir", {"path": str(tmp_path / "m")})
    loaded = load_model(weights, arch=ARCH)
    assert loaded.notes == [f"arch={ARCH!r} given: w.arch.json (which names os:mkdir) ignored"]
    assert not (tmp_path / "m").exists()


def test_a_module_saved_in_training_mode_is_switched_to_eval(files: dict[str, Path]) -> None:
    loaded = load_model(files["training"], trust=True)
    assert not loaded.module.training
    assert any("switched to eval" in note for note in loaded.notes), loaded.notes
    assert any("code from the file ran" in note for note in loaded.notes)


def test_a_pickled_module_is_refused_without_trust_and_nothing_runs(
        files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def unpickling_for_real(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            raise AssertionError("unpickled a full module without --trust")
        return real_load(*args, **kwargs)

    real_load = torch.load
    monkeypatch.setattr(torch, "load", unpickling_for_real)
    with pytest.raises(UnfoldError, match=r"runs code from the file.*pass trust=True") as info:
        load_model(files["pickled"])
    assert "VisionTransformer" in str(info.value), "names what the file would run"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, r"give the architecture with arch='package.module:factory' \(and arch_kwargs for its "
         r"arguments\)"),
    ({"arch": "no_such_package.models:vit"}, "cannot import 'no_such_package.models'"),
    ({"arch": "tests.models:no_such_factory"}, "has no callable 'no_such_factory'.*tiny_vit"),
    ({"arch": "tests.models"}, "expected package.module:factory"),
    ({"arch": ARCH, "arch_kwargs": '{"dim": 32}'}, r"""^arch_kwargs='\{"dim": 32\}': expected a """
                                                   r"mapping of keyword arguments"),
    ({"arch": ARCH, "arch_kwargs": {"depth": 3}}, "unexpected keyword argument 'depth'"),
    ({"arch": ARCH, "arch_kwargs": {"dim": 48}}, "does not fit arch .*size mismatch"),
    ({"arch": 7}, "^arch 7: expected package.module:factory"),
    ({"arch": "tests.models:tiny_translator"}, "missing from the file: .*src_embed"),
])
def test_state_dict_problems_are_named(files: dict[str, Path], kwargs: dict,
                                       message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        load_model(files["state"], **kwargs)


def test_unexpected_keys_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(files["state"], weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(UnfoldError, match="not in the architecture: extra.weight"):
        load_model(tmp_path / "extra.pt", arch=ARCH)


def test_a_dict_without_weights_lists_its_keys(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "opt.pt")
    with pytest.raises(UnfoldError, match="keys are epoch, optimizer"):
        load_model(tmp_path / "opt.pt", arch=ARCH)


def test_bad_files(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnfoldError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(UnfoldError, match="is a directory"):
        load_model(tmp_path)
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UnfoldError, match="not a PyTorch file"):
        load_model(tmp_path / "random.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UnfoldError, match=r"empty.pt is empty \(0 bytes\): not a model file"):
        load_model(tmp_path / "empty.pt")
    data = files["state"].read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnfoldError, match="not a PyTorch file|damaged"):
        load_model(tmp_path / "truncated.pt", arch=ARCH)
    (tmp_path / "bad.arch.json").write_text("{}")
    torch.save(tiny_vit().state_dict(), tmp_path / "bad.pt")
    with pytest.raises(UnfoldError, match="not an architecture file"):
        load_model(tmp_path / "bad.pt")


def test_a_damaged_program_is_a_clear_error(tmp_path: Path) -> None:
    source = CHECKPOINT_DIR / "digits-vit-un.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp_path / "m.pt2", "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("models/model.json"):
                dst.writestr(item, src.read(item))
    with pytest.raises(UnfoldError, match="torch.export program but does not load"):
        load_model(tmp_path / "m.pt2")


def test_arch_json_inputs_must_describe_every_input(tmp_path: Path) -> None:
    torch.save(tiny_vit().state_dict(), tmp_path / "m.state_dict.pt")
    (tmp_path / "m.arch.json").write_text(json.dumps(
        {"arch": ARCH, "inputs": {"pixels": {"shape": [1, 1, 8, 8]}}}))
    with pytest.raises(UnfoldError, match='"inputs" must describe images'):
        load_model(tmp_path / "m.state_dict.pt", trust=True)


@pytest.mark.parametrize("member", ["../outside.txt", "/etc/outside.txt"])
def test_an_archive_whose_members_point_outside_it_is_refused_by_name(
        tmp_path: Path, member: str) -> None:
    """Refused before torch reads it, so none of torch's own logging (a Traceback block and
    "Please check the warnings above") reaches the user: the one error line names the member."""
    import subprocess
    import sys

    source = CHECKPOINT_DIR / "digits-vit-un.pt2"
    bad = tmp_path / "m.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr(zipfile.ZipInfo(member), b"x")
    with pytest.raises(UnfoldError, match=f"its member '{member}' points outside the archive"):
        load_model(bad)
    result = subprocess.run([sys.executable, "-m", "cli", "convert", str(bad), "--out",
                             str(tmp_path / "m.onnx")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "warnings above" not in result.stderr
    assert f"its member '{member}' points outside the archive" in result.stderr


def test_a_fifo_is_not_a_model_file(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "m.pt"
    os.mkfifo(fifo)
    with pytest.raises(UnfoldError, match="is not a regular file \\(a FIFO\\)"):
        load_model(fifo)


# --- weights of a model trained with swap_norms: --swap ------------------------------------------

LN_VIT = "tests.models:tiny_vit"


def _swapped_weights(tmp_path: Path, kind: str = "un") -> Path:
    """What a training script saves: a LayerNorm ViT from its factory, swap_norms, trained
    (here: statistics made up), its state dict."""
    from tests.models import randomize_norms
    from unfold.nn import swap_norms

    model, names = swap_norms(tiny_vit(norm="ln"), kind=kind)
    assert len(names) == 5
    torch.save(randomize_norms(model).state_dict(), tmp_path / "w.pt")
    return tmp_path / "w.pt"


@pytest.mark.parametrize("kind", ["un", "pn"])
def test_swapped_weights_without_swap_name_the_flag(tmp_path: Path, kind: str) -> None:
    path = _swapped_weights(tmp_path, kind)
    with pytest.raises(UnfoldError) as info:
        load_model(path, arch=LN_VIT, arch_kwargs={"norm": "ln"})
    what = "UnifiedNorm" if kind == "un" else "PowerNorm"
    assert f"the file holds {what} statistics on 5 module(s) the architecture builds as " \
           f"LayerNorm (blocks.0.norm1, blocks.0.norm2" in str(info.value)
    assert f"pass swap='{kind}'" in str(info.value)


def test_swap_builds_what_the_weights_were_trained_as(tmp_path: Path) -> None:
    path = _swapped_weights(tmp_path)
    loaded = load_model(path, arch=LN_VIT, arch_kwargs={"norm": "ln"}, swap="un")
    assert "5 LayerNorm(s) of tests.models:tiny_vit swapped to un (swap='un')" in loaded.notes
    from tests.models import randomize_norms
    from unfold.nn import swap_norms

    trained = randomize_norms(swap_norms(tiny_vit(norm="ln"), kind="un")[0]).eval()
    x = torch.rand(2, *VIT_INPUT[1:])
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(x), rtol=0, atol=0)


def test_swap_problems_are_named(tmp_path: Path) -> None:
    path = _swapped_weights(tmp_path)
    with pytest.raises(UnfoldError, match=r"^swap='bn': valid: un, pn, pn\*"):
        load_model(path, arch=LN_VIT, swap="bn")
    with pytest.raises(UnfoldError, match=r"^swap='un': arch tests.models:tiny_vit builds no "
                                          r"LayerNorm to swap"):
        load_model(path, arch=LN_VIT, arch_kwargs={"norm": "un"}, swap="un")
    (tmp_path / "w.arch.json").write_text(json.dumps({"arch": LN_VIT, "swap": "ln"}))
    with pytest.raises(UnfoldError, match=r'w.arch.json: "swap" must be one of un, pn, pn\*, '
                                          r'not "ln"'):
        load_model(path, trust=True)


def test_an_arch_json_may_say_swap(tmp_path: Path) -> None:
    path = _swapped_weights(tmp_path)
    (tmp_path / "w.arch.json").write_text(json.dumps({"arch": LN_VIT,
                                                      "arch_kwargs": {"norm": "ln"},
                                                      "swap": "un"}))
    loaded = load_model(path, trust=True)
    assert any("swapped to un" in note for note in loaded.notes)
