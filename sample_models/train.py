"""Train a shipped sample model, deterministically, on 2 CPU threads, and write it out.

    python -m sample_models.train digits-vit-un        # UnifiedNorm, outlier filtration on
    python -m sample_models.train digits-vit-ln        # its LayerNorm twin, same recipe
    python -m sample_models.train numbers-enfr-un      # post-norm translation, filtration off
    python -m sample_models.train numbers-enfr-ln
    python -m sample_models.train all

Needs the `samples` extra (scikit-learn, num2words, sacrebleu). Writes, per model, into
sample_models/checkpoints/:
  NAME.pt2             a torch.export program of the eval model, carrying its example inputs
                       (what `unfold convert NAME.pt2 --out NAME.onnx` takes with no other flag)
  NAME.state_dict.pt   the state dict (load with weights_only=True)
  NAME.arch.json       the factory (package.module:callable) and keyword arguments that
                       rebuild the architecture for that state dict
and records the held-out metrics in sample_models/metrics.json and the held-out data in
sample_models/data/ (so the tests need neither scikit-learn nor num2words).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from sample_models.data import (
    DATA_DIR,
    Vocab,
    batch_tokens,
    load_digits_split,
    number_pair,
    numbers_split,
    source_ids,
    tokenize,
)
from sample_models.registry import CHECKPOINT_DIR, METRICS_PATH, SAMPLES, build
from sample_models.translation import PAD

THREADS = 2


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def digits_accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(images)).argmax(-1).numpy()
    return float((pred == labels).mean())


def train_digits(name: str) -> dict:
    spec = SAMPLES[name]
    recipe = spec["recipe"]
    _seed_everything(recipe["seed"])
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez_compressed(DATA_DIR / "digits_test.npz", images=x_test, labels=y_test)
    model = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                            weight_decay=recipe["weight_decay"])
    steps_per_epoch = math.ceil(len(x_train) / recipe["batch"])
    total = recipe["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=total,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(recipe["seed"])
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(xs), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * recipe["batch"]:(i + 1) * recipe["batch"]]
            # augmentation: shift by up to one pixel (deterministic generator)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            images = torch.roll(xs[idx], shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(images), ys[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == recipe["epochs"]:
            _log(f"{name}: epoch {epoch + 1}/{recipe['epochs']} loss {loss.item():.3f} "
                 f"held-out accuracy {digits_accuracy(model, x_test, y_test):.4f}")
    model.eval()
    metrics = {"held_out_accuracy": digits_accuracy(model, x_test, y_test),
               "held_out_size": int(len(y_test)), "train_size": int(len(y_train))}
    example = (torch.from_numpy(x_test[:2]),)
    _write(name, model, example, dynamic={"images": {0: torch.export.Dim("batch", max=1024)}},
           value_ranges={"images": (0.0, 1.0)})  # pixel values / 16
    return metrics


def _numbers_data():
    train_ids, test_ids = numbers_split()
    texts = {n: number_pair(n) for n in train_ids + test_ids}
    pairs = {n: (tokenize(en), tokenize(fr)) for n, (en, fr) in texts.items()}
    src_vocab = Vocab.build([pairs[n][0] for n in pairs])
    tgt_vocab = Vocab.build([pairs[n][1] for n in pairs])
    return train_ids, test_ids, texts, pairs, src_vocab, tgt_vocab


def translation_scores(model, test_ids, pairs, src_vocab: Vocab, tgt_vocab: Vocab) -> dict:
    import sacrebleu

    model.eval()
    src = batch_tokens([source_ids(src_vocab, pairs[n][0]) for n in test_ids])
    out = model.greedy(src, max_len=40)
    hyps = [tgt_vocab.decode(row) for row in out.tolist()]
    refs = [pairs[n][1] for n in test_ids]
    exact = float(np.mean([h == r for h, r in zip(hyps, refs, strict=True)]))
    bleu = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]])
    return {"held_out_exact_match": exact, "held_out_bleu": round(float(bleu.score), 2),
            "held_out_size": len(test_ids)}


def train_numbers(name: str) -> dict:
    spec = SAMPLES[name]
    recipe = spec["recipe"]
    _seed_everything(recipe["seed"])
    train_ids, test_ids, texts, pairs, src_vocab, tgt_vocab = _numbers_data()
    (DATA_DIR / "numbers_en_fr.json").write_text(json.dumps({
        "src_vocab": src_vocab.words, "tgt_vocab": tgt_vocab.words,
        "test": [{"n": n, "en": texts[n][0], "fr": texts[n][1]} for n in test_ids],
    }, indent=0, ensure_ascii=False))
    model = build(name, src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab))
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.98))
    warm = recipe["lr_warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1))))
    gen = torch.Generator().manual_seed(recipe["seed"])
    src_all = [source_ids(src_vocab, pairs[n][0]) for n in train_ids]
    tgt_all = [tgt_vocab.encode(pairs[n][1]) for n in train_ids]
    steps_per_epoch = math.ceil(len(train_ids) / recipe["batch"])
    for epoch in range(recipe["epochs"]):
        model.train()
        order = torch.randperm(len(train_ids), generator=gen).tolist()
        for i in range(steps_per_epoch):
            idx = order[i * recipe["batch"]:(i + 1) * recipe["batch"]]
            src = batch_tokens([src_all[j] for j in idx])
            tgt = batch_tokens([tgt_all[j] for j in idx], bos=True, eos=True)
            logits = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD,
                                   label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == recipe["epochs"]:
            _log(f"{name}: epoch {epoch + 1}/{recipe['epochs']} loss {loss.item():.3f}")
    metrics = translation_scores(model, test_ids, pairs, src_vocab, tgt_vocab)
    metrics["train_size"] = len(train_ids)
    _log(f"{name}: {metrics}")
    longest = sorted(range(len(train_ids)), key=lambda j: -len(src_all[j]))[:2]
    src = batch_tokens([src_all[j] for j in longest])
    prev = batch_tokens([tgt_all[j] for j in longest], bos=True)
    batch = torch.export.Dim("batch", max=1024)
    dynamic = {"src_tokens": {0: batch, 1: torch.export.Dim("src_len", max=64)},
               "prev_output_tokens": {0: batch, 1: torch.export.Dim("tgt_len", max=64)}}
    _write(name, model, (src, prev), dynamic=dynamic,
           arch_kwargs={"src_vocab": len(src_vocab), "tgt_vocab": len(tgt_vocab)},
           value_ranges={"src_tokens": (0, len(src_vocab) - 1),
                         "prev_output_tokens": (0, len(tgt_vocab) - 1)})
    return metrics


def _write(name: str, model: torch.nn.Module, example: tuple, dynamic: dict,
           arch_kwargs: dict | None = None, value_ranges: dict | None = None) -> None:
    model.eval()
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), CHECKPOINT_DIR / f"{name}.state_dict.pt")
    spec = SAMPLES[name]
    # the inputs, as `unfold convert NAME.state_dict.pt` reads them (unfold.inputs.InputSpec)
    inputs = {}
    for (input_name, axes), tensor in zip(dynamic.items(), example, strict=True):
        inputs[input_name] = {"shape": list(tensor.shape),
                              "dtype": str(tensor.dtype).removeprefix("torch."),
                              "dynamic": {str(a): d.__name__ for a, d in axes.items()}}
        if value_ranges and input_name in value_ranges:
            inputs[input_name]["value_range"] = list(value_ranges[input_name])
    (CHECKPOINT_DIR / f"{name}.arch.json").write_text(json.dumps({
        "arch": spec["factory"], "arch_kwargs": {**spec["kwargs"], **(arch_kwargs or {})},
        "seed": spec["recipe"]["seed"], "inputs": inputs}, indent=2) + "\n")
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    torch.export.save(program, CHECKPOINT_DIR / f"{name}.pt2")


TRAINERS = {"digits": train_digits, "numbers": train_numbers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*SAMPLES, "all"])
    args = parser.parse_args()
    names = list(SAMPLES) if args.name == "all" else [args.name]
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    metrics = json.loads(METRICS_PATH.read_text()) if METRICS_PATH.exists() else {}
    for name in names:
        start = time.perf_counter()
        result = TRAINERS[SAMPLES[name]["task"]](name)
        result["train_seconds"] = round(time.perf_counter() - start, 1)
        result["torch"] = torch.__version__
        metrics[name] = result
        METRICS_PATH.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        _log(f"{name}: {result}")


if __name__ == "__main__":
    main()
