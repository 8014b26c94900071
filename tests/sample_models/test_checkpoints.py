"""The shipped sample models: every file present and small, the state dicts load safely into
their recorded factories and reproduce the card's held-out metrics, the torch.export programs
carry example inputs and compute what the state dicts compute, and the UN models' eval graphs
export to ONNX with ONNX Runtime agreeing."""

from __future__ import annotations

import importlib
import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sample_models.data import DATA_DIR, Vocab, batch_tokens, source_ids, tokenize
from sample_models.registry import CHECKPOINT_DIR, METRICS_PATH, SAMPLES

MAX_BYTES = 5 * 2**20
METRICS = json.loads(METRICS_PATH.read_text())
DIGITS = [n for n, s in SAMPLES.items() if s["task"] == "digits"]
NUMBERS = [n for n, s in SAMPLES.items() if s["task"] == "numbers"]


def load_from_state_dict(name: str) -> torch.nn.Module:
    arch = json.loads((CHECKPOINT_DIR / f"{name}.arch.json").read_text())
    module_name, _, attr = arch["arch"].partition(":")
    model = getattr(importlib.import_module(module_name), attr)(**arch["arch_kwargs"])
    state = torch.load(CHECKPOINT_DIR / f"{name}.state_dict.pt", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_program(name: str) -> torch.export.ExportedProgram:
    return torch.export.load(CHECKPOINT_DIR / f"{name}.pt2")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_shipped_files_present_and_small(name: str) -> None:
    for suffix in (".pt2", ".state_dict.pt", ".arch.json"):
        path = CHECKPOINT_DIR / f"{name}{suffix}"
        assert path.is_file(), f"{path} is not shipped; run python -m sample_models.train {name}"
        assert path.stat().st_size <= MAX_BYTES, f"{path} is {path.stat().st_size} bytes"
    assert name in METRICS, f"metrics.json has no entry for {name}"


@pytest.mark.parametrize("name", DIGITS)
def test_digits_model_reproduces_card_accuracy(name: str) -> None:
    data = np.load(DATA_DIR / "digits_test.npz")
    images, labels = torch.from_numpy(data["images"]), data["labels"]
    model = load_from_state_dict(name)
    with torch.no_grad():
        logits = model(images)
    accuracy = float((logits.argmax(-1).numpy() == labels).mean())
    expected = METRICS[name]["held_out_accuracy"]
    assert abs(accuracy - expected) <= 1 / len(labels) + 1e-12, \
        f"{name}: held-out accuracy {accuracy:.4f}, card says {expected:.4f}"

    program = load_program(name)
    (example,) = program.example_inputs[0]
    assert example.shape[1:] == (1, 8, 8), "the program carries its example input"
    with torch.no_grad():
        from_program = program.module()(images)
    torch.testing.assert_close(from_program, logits, rtol=1e-5, atol=1e-5)


def _numbers_test_set():
    data = json.loads((DATA_DIR / "numbers_en_fr.json").read_text())
    src_vocab, tgt_vocab = Vocab(data["src_vocab"]), Vocab(data["tgt_vocab"])
    pairs = [(tokenize(row["en"]), tokenize(row["fr"])) for row in data["test"]]
    return src_vocab, tgt_vocab, pairs


@pytest.mark.parametrize("name", NUMBERS)
def test_translation_model_reproduces_card_exact_match(name: str) -> None:
    src_vocab, tgt_vocab, pairs = _numbers_test_set()
    model = load_from_state_dict(name)
    src = batch_tokens([source_ids(src_vocab, en) for en, _ in pairs])
    hyps = [tgt_vocab.decode(row) for row in model.greedy(src, max_len=40).tolist()]
    exact = float(np.mean([h == fr for h, (_, fr) in zip(hyps, pairs, strict=True)]))
    expected = METRICS[name]["held_out_exact_match"]
    assert abs(exact - expected) <= 1 / len(pairs) + 1e-12, \
        f"{name}: held-out exact match {exact:.4f}, card says {expected:.4f}"

    program = load_program(name)
    example_src, example_prev = program.example_inputs[0]
    assert example_src.dtype == torch.long and example_prev.dtype == torch.long
    prev = batch_tokens([tgt_vocab.encode(fr) for _, fr in pairs[:64]], bos=True)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(src[:64], prev), model(src[:64], prev),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in SAMPLES if n.endswith("-un")])
def test_un_model_eval_graph_exports_to_onnx(name: str) -> None:
    program = load_program(name)
    model = load_from_state_dict(name)
    inputs = program.example_inputs[0]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=True)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(onnx_model, full_check=True)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    (out,) = session.run(None, feeds)
    with torch.no_grad():
        expected = model(*inputs).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
