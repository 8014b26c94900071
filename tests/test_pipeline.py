"""unfold.convert / unfold.verify end to end: the shipped samples in each format, models built
here (pre-norm ViT, post-norm encoder-decoder), dynamic axes, a model with nothing to fold,
and a fold that goes wrong (caught, located, nothing written)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import unfold
from sample_models.data import DATA_DIR
from sample_models.registry import CHECKPOINT_DIR, METRICS_PATH
from tests.models import SRC_VOCAB, TGT_VOCAB, tiny_translator, tiny_vit, translator_inputs
from tests.optional import import_or_skip
from unfold import Inputs
from unfold.engines.ort import OrtRunner
from unfold.errors import UnfoldError
from unfold.pipeline import Outcome

METRICS = json.loads(METRICS_PATH.read_text())
NORM_OPS = {"ReduceMean", "Sqrt", "Pow", "Div", "Reciprocal", "BatchNormalization",
            "LayerNormalization"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[unfold.pipeline.ConvertReport,
                                                             Path]:
    """The shipped digits program, converted with no flag at all (dynamo exporter)."""
    out = tmp_path_factory.mktemp("digits") / "digits.onnx"
    return unfold.convert(CHECKPOINT_DIR / "digits-vit-un.pt2", out), out


def test_a_shipped_program_converts_with_no_flags(digits) -> None:
    report, out = digits
    assert [s.label for s in report.fold.sites] == [
        f"blocks.{i}.norm{j}" for i in range(4) for j in (1, 2)] + ["norm"], \
        "sites named by the torch module the dynamo exporter recorded"
    assert report.written == out and out.is_file()
    assert (report.format, report.exporter) == ("torch.export program", "dynamo")
    assert len(report.fold.folded) == len(report.fold.sites) == 9
    assert report.verification is not None and report.verification
    labels = [b.label for b in report.verification.batches]
    assert "random, batch 1" in labels and "random, batch 5" in labels
    assert "the model's example inputs" in labels
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert not ops & NORM_OPS, ops & NORM_OPS


def test_the_converted_digits_model_keeps_the_card_accuracy_at_any_batch(digits) -> None:
    _, out = digits
    data = np.load(DATA_DIR / "digits_test.npz")
    logits = OrtRunner(out).run({"images": data["images"]})["output"]  # batch 360
    accuracy = float((logits.argmax(-1) == data["labels"]).mean())
    assert accuracy == METRICS["digits-vit-un"]["held_out_accuracy"]


def test_verify_the_written_model_against_its_program(digits) -> None:
    _, out = digits
    report = unfold.verify(CHECKPOINT_DIR / "digits-vit-un.pt2", out)
    assert report and report.reference.startswith("torch") and \
        report.candidate.startswith("onnxruntime")


@pytest.mark.slow
def test_a_state_dict_with_its_arch_json_and_dynamic_lengths(tmp_path: Path) -> None:
    out = tmp_path / "numbers.onnx"
    report = unfold.convert(CHECKPOINT_DIR / "numbers-enfr-un.state_dict.pt", out, trust=True)
    assert report and report.format == "state dict" and report.exporter == "dynamo"
    assert "random, src_len 12, tgt_len 8" in [b.label for b in report.verification.batches]
    assert len(report.fold.folded) == len(report.fold.sites) == 12
    src, prev = report.inputs
    assert dict(src.dynamic) == {0: "batch", 1: "src_len"}
    model = unfold.load.load_model(CHECKPOINT_DIR / "numbers-enfr-un.state_dict.pt",
                                   trust=True).module
    runner = OrtRunner(out)
    for batch, src_len, tgt_len in [(1, 4, 3), (3, 12, 9)]:
        gen = torch.Generator().manual_seed(batch)
        s = torch.randint(4, 37, (batch, src_len), generator=gen)
        p = torch.randint(4, 32, (batch, tgt_len), generator=gen)
        with torch.no_grad():
            expected = model(s, p).numpy()
        got = runner.run({"src_tokens": s.numpy(), "prev_output_tokens": p.numpy()})["output"]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_length_the_exporter_baked_in_is_caught(tmp_path: Path) -> None:
    """The TorchScript exporter traces the causal mask at the example's length: the ONNX
    would only run at that length. Verification varies the lengths and refuses it."""
    out = tmp_path / "numbers.onnx"
    with pytest.raises(UnfoldError, match='batch "random, src_len 12, tgt_len 8": ONNX Runtime '
                                          'failed') as info:
        unfold.convert(CHECKPOINT_DIR / "numbers-enfr-un.state_dict.pt", out, trust=True,
                       exporter="torchscript")
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_a_state_dict_with_arch_and_input_flags_built_here(tmp_path: Path) -> None:
    """A pre-norm ViT built in the test, default exporter, every input flag."""
    torch.save({"model": tiny_vit().state_dict(), "epoch": 7}, tmp_path / "ckpt.pt")
    report = unfold.convert(tmp_path / "ckpt.pt", tmp_path / "vit.onnx",
                            arch="tests.models:tiny_vit", arch_kwargs={"dim": 32},
                            inputs=Inputs(shapes=[(3, 1, 8, 8)], float_range=(0, 1),
                                          dynamic=["batch"]))
    assert report and report.format == "training checkpoint" and report.exporter == "dynamo"
    assert len(report.fold.folded) == len(report.fold.sites) == 5
    assert report.inputs[0].describe() == "images: 3x1x8x8 float32 in [0.0, 1.0], dynamic batch"


def test_a_post_norm_encoder_decoder_pickled_in_training_mode(tmp_path: Path) -> None:
    torch.save(tiny_translator().train(), tmp_path / "translator.pt")
    with pytest.raises(UnfoldError, match="pass trust=True"):
        unfold.convert(tmp_path / "translator.pt", tmp_path / "t.onnx")
    assert not (tmp_path / "t.onnx").exists()
    report = unfold.convert(
        tmp_path / "translator.pt", tmp_path / "t.onnx", trust=True, exporter="torchscript",
        inputs=Inputs(shapes=[(2, 7), (2, 5)], dtype="int64",
                      int_range={"src_tokens": (1, SRC_VOCAB - 1),
                                 "prev_output_tokens": (1, TGT_VOCAB - 1)},
                      dynamic=["batch"]))
    assert report, report.to_dict()
    assert any("switched to eval" in n for n in report.notes)
    assert len(report.fold.folded) == len(report.fold.sites) == 7
    src, prev = translator_inputs(batch=4)
    with torch.no_grad():
        expected = tiny_translator()(src, prev).numpy()
    got = OrtRunner(tmp_path / "t.onnx").run({"src_tokens": src.numpy(),
                                              "prev_output_tokens": prev.numpy()})["output"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_model_without_offline_norms_converts_and_says_why(tmp_path: Path) -> None:
    source = CHECKPOINT_DIR / "digits-vit-ln.state_dict.pt"
    report = unfold.convert(source, tmp_path / "ln.onnx", exporter="torchscript", trust=True)
    assert report and report.fold.sites == []
    assert any(n.startswith("no offline normalization found: nothing to fold (online norms "
                            "stay: ") for n in report.notes), report.notes
    strict = unfold.convert(source, tmp_path / "strict.onnx", exporter="torchscript",
                            strict=True, trust=True)
    assert not strict and not (tmp_path / "strict.onnx").exists()
    assert strict.outcome is Outcome.NORMS_LEFT and report.outcome is Outcome.WRITTEN
    assert strict.to_dict()["outcome"] == "norms left"


def test_a_wrong_fold_is_caught_located_and_nothing_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fold = unfold.pipeline.fold_model

    def fold_then_corrupt(model, **kwargs):
        folded, report = real_fold(model, **kwargs)
        matmul = next(n for n in folded.graph.node if n.op_type == "MatMul"
                      and any(i.name == n.input[1] for i in folded.graph.initializer))
        weight = next(i for i in folded.graph.initializer if i.name == matmul.input[1])
        array = onnx.numpy_helper.to_array(weight).copy()
        array.flat[0] += 0.5
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        fold_then_corrupt.node = matmul.name
        return folded, report

    monkeypatch.setattr(unfold.pipeline, "fold_model", fold_then_corrupt)
    out = tmp_path / "bad.onnx"
    report = unfold.convert(CHECKPOINT_DIR / "digits-vit-un.state_dict.pt", out, trust=True,
                            exporter="torchscript")
    assert not report and not out.exists() and list(tmp_path.iterdir()) == []
    assert report.outcome is Outcome.MISMATCH
    assert report.verification is not None and not report.verification
    assert "the export matches torch; the fold departs" in report.verification.notes
    assert report.verification.divergence is not None
    assert report.verification.divergence.node == fold_then_corrupt.node
    as_json = report.to_dict()  # (a failed check is falsy: it was left out of the JSON)
    assert as_json["verification"]["passed"] is False and as_json["outcome"] == "mismatch"


def test_no_verify_writes_and_says_so(tmp_path: Path) -> None:
    report = unfold.convert(CHECKPOINT_DIR / "digits-vit-un.state_dict.pt",
                            tmp_path / "m.onnx", trust=True, exporter="torchscript", verify=False)
    assert report and report.verification is None
    assert any("NOT checked" in n for n in report.notes)


def test_real_inputs_from_npz_are_verified_too(tmp_path: Path) -> None:
    data = np.load(DATA_DIR / "digits_test.npz")
    np.savez(tmp_path / "real.npz", images=data["images"][:16])
    report = unfold.convert(CHECKPOINT_DIR / "digits-vit-un.state_dict.pt",
                            tmp_path / "m.onnx", trust=True, exporter="torchscript",
                            inputs=Inputs(npz=tmp_path / "real.npz"))
    assert report and report.verification is not None
    assert report.verification.batches[-1].label == "real inputs real.npz"
    assert report.verification.batches[-1].shapes == {"images": (16, 1, 8, 8)}


def test_an_input_shape_that_does_not_fit_says_what_the_model_takes(tmp_path: Path) -> None:
    with pytest.raises(UnfoldError, match=r"^Inputs\(shapes=\{'images': \(2, 3, 8, 8\)\}\) does "
                                          r"not fit the model, which takes images: "
                                          r"2x1x8x8 float32 in \[0.0, 1.0\], dynamic batch"):
        unfold.convert(CHECKPOINT_DIR / "digits-vit-un.state_dict.pt", tmp_path / "m.onnx",
                       trust=True, inputs=Inputs(shapes=[(2, 3, 8, 8)]))


@pytest.mark.slow
def test_a_hugging_face_bert_with_an_optional_attention_mask(tmp_path: Path) -> None:
    """A transformers BertModel (the `hf` extra) whose LayerNorms were swapped for UN, from a
    state dict: forward's optional attention_mask is used because it is given a shape, and
    passed by keyword (token_type_ids, between them, keeps its default)."""
    import_or_skip("transformers")
    from tests.models import tiny_hf_bert

    state = tmp_path / "bert.pt"
    torch.save(tiny_hf_bert().state_dict(), state)
    options = Inputs(shapes={"input_ids": (2, 12), "attention_mask": (2, 12)}, dtype="int64",
                     int_range={"input_ids": (0, 99), "attention_mask": (0, 1)},
                     dynamic=["batch", "seq"])
    report = unfold.convert(state, tmp_path / "bert.onnx", arch="tests.models:tiny_hf_bert",
                            inputs=options)
    assert report and report.exporter == "dynamo"
    assert [s.name for s in report.inputs] == ["input_ids", "attention_mask"]
    assert [s.status for s in report.fold.sites] == ["folded"] + ["materialized"] * 4
    assert [o.name for o in report.verification.batches[0].outputs] == ["last_hidden_state",
                                                                        "pooler_output"]
    assert "random, seq 14" in [b.label for b in report.verification.batches]
    model = onnx.load(tmp_path / "bert.onnx")
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert not {n.op_type for n in model.graph.node} & NORM_OPS


@pytest.mark.slow
def test_a_timm_vit_from_a_state_dict(tmp_path: Path) -> None:
    """A timm ViT (the `zoo` extra) with its norms swapped for UN: every norm folds."""
    import_or_skip("timm")
    from tests.models import tiny_timm_vit

    state = tmp_path / "vit.pt"
    torch.save(tiny_timm_vit().state_dict(), state)
    options = Inputs(shapes=[(2, 3, 32, 32)], float_range=(0, 1), dynamic=["batch"])
    report = unfold.convert(state, tmp_path / "vit.onnx", arch="tests.models:tiny_timm_vit",
                            inputs=options)
    assert report and len(report.fold.sites) == 5
    assert [s.status for s in report.fold.sites] == ["folded"] * 5, \
        [(s.name, s.reasons) for s in report.fold.left]
    assert not {n.op_type for n in onnx.load(tmp_path / "vit.onnx").graph.node} & NORM_OPS


@pytest.mark.parametrize(("options", "message"), [
    ({"atol": -1}, r"^atol=-1: a tolerance is a finite number >= 0 \(e.g. atol=0.0001\)"),
    ({"atol": "1e-4"}, r"^atol='1e-4': a tolerance is a finite number"),
    ({"atol": ["1e-4"]}, r"^atol=\['1e-4'\]: a tolerance is"),
    ({"rtol": {"logits": "x"}}, r"^rtol=\{'logits': 'x'\}: a tolerance is"),
    ({"rtol": {"logits": float("inf")}}, r"^rtol=\{'logits': inf\}: a tolerance is"),
    ({"inputs": Inputs(shapes=[(1, 0)])}, r"^Inputs\(shapes=\[\(1, 0\)\]\): a shape is a tuple"),
    ({"inputs": Inputs(shapes="1x3x8x8")}, r"^Inputs\(shapes='1x3x8x8'\): expected shapes"),
    ({"inputs": Inputs(dtype={"images": "int65"})}, r"^Inputs\(dtype=\{'images': 'int65'\}\): "
                                                    r"valid dtypes: "),
    ({"inputs": Inputs(int_range="zzz")}, r"^Inputs\(int_range='zzz'\): a range is"),
    ({"inputs": Inputs(dynamic=["batch", "sideways"])}, "'sideways' is not an axis name"),
    ({"inputs": {"shapes": [(1, 1, 8, 8)]}}, r"^inputs: expected an unfold.Inputs\(...\), "
                                             r"not dict"),
    ({"exporter": "nosuch"}, "^exporter='nosuch': valid: auto, dynamo, torchscript"),
    ({"opset": "17"}, "^opset='17': must be a positive ONNX opset version"),
    ({"skip": ["nosuch"]}, r"^skip='nosuch': valid: "),
    ({"skip": "matmul"}, r"^skip='matmul': expected rule names, e.g. skip=\['"),
    ({"max_scale": 0.5}, r"^max_scale=0.5: must be a number above 1"),
    ({"seed": -1}, r"^seed=-1: a seed is an int >= 0"),
    ({"seed": "0"}, r"^seed='0': a seed is an int >= 0"),
    ({"inputs": Inputs(npz={"images": [0.5]})}, r"^Inputs\(npz=\{'images': \[0.5\]\}\): expected "
                                               r"the path of an .npz file, not a dict"),
    ({"arch_kwargs": '{"dim": 32}'}, r"""^arch_kwargs='\{"dim": 32\}': expected a mapping of """
                                     r"keyword arguments by name, e.g. arch_kwargs=\{'dim': "),
])
def test_options_are_checked_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             options: dict, message: str) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(unfold.pipeline, "load_model", no_work)
    with pytest.raises(UnfoldError, match=message):
        unfold.convert(CHECKPOINT_DIR / "digits-vit-un.pt2", tmp_path / "m.onnx", **options)
    verify_options = {k: v for k, v in options.items()
                      if k in ("atol", "rtol", "inputs", "arch_kwargs", "seed")}
    if verify_options:
        with pytest.raises(UnfoldError, match=message):
            unfold.verify(CHECKPOINT_DIR / "digits-vit-un.pt2", tmp_path / "m.onnx",
                          **verify_options)
    assert list(tmp_path.iterdir()) == []


def test_a_module_in_memory_converts_and_keeps_its_modes_and_weights(tmp_path: Path) -> None:
    """A training script's module, in training mode part way (its dropout off, say): converted
    in eval mode, and afterwards every submodule's mode and every weight as it was."""
    model = tiny_vit().train()
    model.head.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    report = unfold.convert(model, tmp_path / "vit.onnx",
                            inputs=Inputs(shapes=[(2, 1, 8, 8)], dynamic=["batch"]))
    assert report, report.to_dict()
    assert report.format == "module in memory" and report.source == "<VisionTransformer in memory>"
    assert len(report.fold.folded) == len(report.fold.sites) == 5
    assert {name: m.training for name, m in model.named_modules()} == modes
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    got = OrtRunner(tmp_path / "vit.onnx").run({"images": images.numpy()})
    np.testing.assert_allclose(next(iter(got.values())), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def test_a_torch_export_program_in_memory_converts(tmp_path: Path) -> None:
    program = torch.export.export(tiny_vit(), (torch.rand(2, 1, 8, 8),))
    report = unfold.convert(program, tmp_path / "vit.onnx")
    assert report and report.format == "torch.export program in memory"
    assert report.inputs[0].describe().startswith("images: 2x1x8x8 float32")


def test_a_module_or_a_device_that_is_no_such_thing_is_named(tmp_path: Path) -> None:
    with pytest.raises(UnfoldError, match="^model: expected a model file path .*, a "
                                          "torch.nn.Module or a torch.export.ExportedProgram, "
                                          "not a list"):
        unfold.convert([torch.nn.Linear(2, 2)], tmp_path / "m.onnx")
    with pytest.raises(UnfoldError, match="^arch, arch_kwargs, swap and trust are for model "
                                          "files: a Linear is the model itself"):
        unfold.convert(torch.nn.Linear(2, 2), tmp_path / "m.onnx", arch="x:y")
    with pytest.raises(UnfoldError, match="^device='gpu': valid: cpu, cuda, cuda:N"):
        unfold.verify(CHECKPOINT_DIR / "digits-vit-un.pt2", tmp_path / "m.onnx", device="gpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("options", "message"), [
    (Inputs(int_range=(0, 9)),
     "Inputs(int_range=(0, 9)): the model has no integer input to apply it to; its inputs: "
     "images (float32)"),
    (Inputs(int_range={"images": (0, 9)}),
     "Inputs(int_range={'images': (0, 9)}): input images is not an integer input"),
])
def test_a_range_that_applies_to_no_input_is_an_error(tmp_path: Path, options: Inputs,
                                                      message: str) -> None:
    with pytest.raises(UnfoldError, match=re.escape(message)):
        unfold.convert(CHECKPOINT_DIR / "digits-vit-un.pt2", tmp_path / "m.onnx",
                       inputs=options)
    assert list(tmp_path.iterdir()) == []


def test_verify_against_a_module_in_memory(tmp_path: Path) -> None:
    """The written model checked against the module the script holds, its modes kept; and a
    module it does not match is a failing verdict, not an error."""
    model = tiny_vit().train()
    unfold.convert(model, tmp_path / "vit.onnx", inputs=Inputs(shapes=[(2, 1, 8, 8)]))
    report = unfold.verify(model, tmp_path / "vit.onnx", inputs=Inputs(shapes=[(2, 1, 8, 8)]))
    assert report, report.to_dict()
    assert all(m.training for m in model.modules())
    assert not unfold.verify(tiny_vit(seed=1), tmp_path / "vit.onnx",
                             inputs=Inputs(shapes=[(2, 1, 8, 8)]))
