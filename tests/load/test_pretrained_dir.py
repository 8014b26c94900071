"""A Hugging Face model trained after swap_norms, saved with save_pretrained: the directory
records the swap (config.json), unfold.nn.from_pretrained and `unfold convert DIR` build it back
with its UnifiedNorms, from transformers' own classes and safetensors only. Needs transformers
(the `hf` extra); skips without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import HF_VOCAB, randomize_norms
from tests.optional import import_or_skip
from unfold.errors import UnfoldError


def _bert_dir(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    transformers = import_or_skip("transformers")
    from unfold.nn import swap_norms

    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=HF_VOCAB,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    model, _ = swap_norms(transformers.BertModel(config), kind="un", window_size=4)
    randomize_norms(model).eval()  # (as if trained: statistics of their own)
    model.save_pretrained(tmp_path / "bert-un")
    return model, tmp_path / "bert-un"


def _hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def test_the_directory_records_the_swap_and_from_pretrained_restores_it(tmp_path: Path) -> None:
    model, directory = _bert_dir(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    assert config["unfold_swap"] == {"kind": "un", "options": {"window_size": 4}}
    from unfold.nn import UnifiedNorm, from_pretrained

    again = from_pretrained(directory)
    assert sum(isinstance(m, UnifiedNorm) for m in again.modules()) == 5
    ids = torch.randint(0, HF_VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_hidden(again, ids), _hidden(model, ids))
    # what transformers alone gives back: LayerNorms, the statistics dropped, another model
    import transformers

    plain = transformers.AutoModel.from_pretrained(directory)
    assert not torch.allclose(_hidden(plain, ids), _hidden(model, ids), atol=1e-2)


def test_convert_a_save_pretrained_directory(tmp_path: Path) -> None:
    """The inputs come from the model: input_ids (its main input), 1x16 ids of its vocabulary,
    dynamic batch and sequence."""
    import unfold
    from unfold.engines.ort import OrtRunner

    model, directory = _bert_dir(tmp_path)
    report = unfold.convert(directory, tmp_path / "bert.onnx")
    assert report, report.to_dict()
    assert report.format == "Hugging Face directory"
    assert [s.describe() for s in report.inputs] == [
        f"input_ids: 1x16 int64 in [0, {HF_VOCAB - 1}], dynamic batch, sequence"]
    assert "5 LayerNorm(s) swapped to un, as config.json records" in report.notes
    assert len(report.fold.sites) == 5 and report.fold.to_dict()["no_norm_left"]
    ids = torch.randint(0, HF_VOCAB, (3, 20), generator=torch.Generator().manual_seed(2))
    got = OrtRunner(tmp_path / "bert.onnx").run({"input_ids": ids.numpy()})
    expected = _hidden(model, ids).numpy()
    np.testing.assert_allclose(got["last_hidden_state"], expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def test_a_vision_model_takes_its_image_size_from_the_config(tmp_path: Path) -> None:
    transformers = import_or_skip("transformers")
    import unfold
    from unfold.nn import swap_norms

    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=16, patch_size=8,
                                    num_channels=3)
    torch.manual_seed(0)
    model, _ = swap_norms(transformers.ViTModel(config), kind="pn")
    randomize_norms(model).save_pretrained(tmp_path / "vit-pn")
    report = unfold.convert(tmp_path / "vit-pn", tmp_path / "vit.onnx")
    assert report, report.to_dict()
    assert [s.describe() for s in report.inputs] == [
        "pixel_values: 1x3x16x16 float32, dynamic batch"]


def _broken(tmp_path: Path, how: str) -> Path:
    _, directory = _bert_dir(tmp_path)
    config = directory / "config.json"
    if how == "pickle":
        (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    elif how == "no weights":
        (directory / "model.safetensors").unlink()
    elif how == "unknown class":
        described = json.loads(config.read_text())
        described.update(architectures=["MyBertModel"], auto_map={"AutoModel": "m.MyBert"})
        config.write_text(json.dumps(described))
    elif how == "bad swap":
        described = json.loads(config.read_text())
        described["unfold_swap"] = {"kind": "ln"}
        config.write_text(json.dumps(described))
    elif how == "swap lost":
        described = json.loads(config.read_text())
        del described["unfold_swap"]
        config.write_text(json.dumps(described))
    elif how == "no config":
        config.unlink()
    return directory


@pytest.mark.parametrize(("how", "message"), [
    ("pickle", "holds its weights as a pickle (pytorch_model.bin), which unfold does not load "
               "from a directory"),
    ("no weights", "has config.json but no weights: expected model.safetensors"),
    ("unknown class", "config.json names the architecture MyBertModel, which transformers "
                      "{version} does not have (its config has an \"auto_map\": code of its "
                      "own); unfold builds only transformers' own classes and never runs a "
                      "model's own code"),
    ("bad swap", "config.json: \"unfold_swap\" must be {\"kind\": one of un, pn, pn*"),
    ("swap lost", "weights do not fit the model its config.json describes (in the weights but "
                  "not in the model: embeddings.LayerNorm.backward_window"),
    ("swap lost", "the file holds UnifiedNorm statistics on 5 module(s) the architecture builds "
                  "as LayerNorm (embeddings.LayerNorm, encoder.layer.0.attention.output.LayerNorm"
                  ", encoder.layer.0.output.LayerNorm, encoder.layer.1.attention.output.LayerNorm"
                  ", encoder.layer.1.output.LayerNorm): the model was trained with "
                  "unfold.nn.swap_norms; pass swap='un'"),
    ("no config", "is a directory without a config.json; give a model file (.pt, .pt2, .pth) "
                  "or a Hugging Face save_pretrained directory"),
])
def test_a_directory_it_cannot_use_says_why(tmp_path: Path, how: str, message: str) -> None:
    import transformers

    import unfold

    directory = _broken(tmp_path, how)
    with pytest.raises(UnfoldError) as info:
        unfold.convert(directory, tmp_path / "m.onnx")
    assert message.replace("{version}", transformers.__version__) in str(info.value)
    assert info.value.exit_code == 2
    assert not (tmp_path / "m.onnx").exists()
    shutil.rmtree(directory)


def test_swap_stands_in_for_a_record_the_config_lacks(tmp_path: Path) -> None:
    """A directory saved by code that did not record the swap: swap= says it; a swap that
    contradicts the record is refused."""
    import unfold

    directory = _broken(tmp_path, "swap lost")
    report = unfold.convert(directory, tmp_path / "bert.onnx", swap="un")
    assert report and "5 LayerNorm(s) swapped to un, swap='un'" in report.notes
    _, recorded = _bert_dir(tmp_path / "again")
    with pytest.raises(UnfoldError, match=r"^swap='pn': .*config.json records the swap to un; "
                                          r"leave swap out"):
        unfold.convert(recorded, tmp_path / "other.onnx", swap="pn")
