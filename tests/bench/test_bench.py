"""unfold.bench end to end on small ONNX models (a norm-then-linear model, its fold and its
no-norm twin): every model timed in every round, per batch, ratios to the baseline, memory
measured in a process of its own, the JSON's schema, and every bad option refused before any
model loads. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import unfold.bench as bench_module
from tests.fold.helpers import post_norm_stack
from unfold.bench import bench
from unfold.errors import UnfoldError
from unfold.fold import fold_model


def _dynamic_batch(m: onnx.ModelProto) -> onnx.ModelProto:
    for value in (*m.graph.input, *m.graph.output):
        value.type.tensor_type.shape.dim[0].ClearField("dim_value")
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return m


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("bench")
    un = _dynamic_batch(post_norm_stack(3, 16))
    folded, _ = fold_model(un)
    none = _dynamic_batch(post_norm_stack(3, 16, norm=False))
    paths = [folder / "un.onnx", folder / "un-folded.onnx", folder / "none.onnx"]
    for model, path in zip((un, folded, none), paths, strict=True):
        onnx.save(model, path)
    return paths


def test_every_model_every_round_every_batch(trio: list[Path]) -> None:
    seen: list[tuple[int, int]] = []
    report = bench(trio, engine="ort", batches=(1, 4), threads=1, rounds=7, warmup=1,
                   baseline="none", memory=False, progress=lambda b, d, t: seen.append((b, d)))
    assert [(r.model, r.batch) for r in report.results] == [
        (m, b) for b in (1, 4) for m in ("un", "un-folded", "none")]
    assert all(len(r.seconds) == 7 and r.latency.rounds == 7 for r in report.results)
    assert all(r.shapes == {"x": [r.batch, 5, 16]} for r in report.results)
    assert [r.ratio is None for r in report.results] == [False, False, True] * 2
    assert all(r.ratio.low <= r.ratio.median <= r.ratio.high
               for r in report.results if r.ratio)
    assert seen == [(b, d) for b in (1, 4) for d in range(1, 8)]
    assert report.runtime.startswith("onnxruntime") and report.threads == 1


def test_memory_is_measured_in_a_process_per_model(trio: list[Path]) -> None:
    report = bench(trio[:2], engine="ort", threads=1, rounds=2, warmup=0)
    for r in report.results:
        assert r.memory is not None and r.memory.peak_mib > r.memory.model_mib > 0
        assert r.memory.peak_mib < 2000


def test_the_json_holds_every_round_and_the_environment(trio: list[Path]) -> None:
    report = bench(trio, engine="ort", threads=1, rounds=3, warmup=0, memory=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["schema"] == "unfold.bench/1" and data["baseline"] == "un"
    assert {"unfold", "python", "numpy", "onnx", "cpu", "platform"} <= set(data["environment"])
    row = data["results"][1]
    assert set(row) == {"model", "path", "batch", "shapes", "latency_s", "throughput_per_s",
                        "ratio_to_baseline", "memory", "seconds"}
    assert len(row["seconds"]) == 3 and set(row["ratio_to_baseline"]) == {
        "median", "low", "high", "confidence"}
    assert row["throughput_per_s"] == pytest.approx(1 / row["latency_s"]["median"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"engine": "nosuch"}, "^engine='nosuch': valid: ort, openvino, trt, torch"),
    ({"batches": (0,)}, r"^batches=\(0,\): batch sizes are positive integers, e.g. "
                        r"batches=\[1, 8\]"),
    ({"batches": "1,8"}, "^batches='1,8': batch sizes are positive"),
    ({"threads": 0}, "^threads=0: must be at least 1"),
    ({"threads": 2.5}, "^threads=2.5: must be at least 1"),
    ({"rounds": 3, "seconds": 1.0}, "give rounds or seconds, not both"),
    ({"rounds": 1}, "^rounds=1: at least 2"),
    ({"seconds": "5"}, "^seconds='5': must be a positive number"),
    ({"baseline": "nope"}, "^baseline='nope': not one of the models: un, un-folded, none"),
    ({"inputs": bench_module.Inputs(shapes=[(1, 0)])}, r"^Inputs\(shapes=\[\(1, 0\)\]\)"),
    ({"seed": -3}, "^seed=-3: a seed is an int >= 0"),
    ({"device": "gpu"}, "^device='gpu': valid: cpu, cuda"),
])
def test_bad_options_fail_before_any_model_loads(trio: list[Path], kwargs: dict, message: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(bench_module, "load_target", no_load)
    with pytest.raises(UnfoldError, match=message):
        bench(trio, **kwargs)


def test_one_model_given_as_a_string_is_refused(trio: list[Path]) -> None:
    with pytest.raises(UnfoldError, match=r"^models='.*un.onnx': expected a list of model "
                                          r"files \(or, for the torch engine, modules\), e.g. "
                                          r"models=\['un.onnx', 'none.onnx'\]"):
        bench(str(trio[0]), rounds=2, memory=False)


def test_models_an_engine_cannot_run_are_named(trio: list[Path], tmp_path: Path) -> None:
    with pytest.raises(UnfoldError, match="engine='torch' runs model.pt files; .*un.onnx is "
                                          "ONNX"):
        bench(trio[:1], engine="torch", rounds=2, memory=False)
    with pytest.raises(UnfoldError, match="no such file"):
        bench([tmp_path / "missing.onnx"], rounds=2)
    static = tmp_path / "static.onnx"
    m = post_norm_stack(1, 8)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a batch fixed at 2
    onnx.save(m, static)
    with pytest.raises(UnfoldError, match=r"input x has a fixed first dimension 2: batch 8 "
                                          r"cannot apply \(.*, or bench at batches=\[2\]\)"):
        bench([static], batches=(8,), rounds=2, memory=False)


def test_torch_models_run_on_torch() -> None:
    from sample_models.registry import CHECKPOINT_DIR

    report = bench([CHECKPOINT_DIR / "digits-vit-un.pt2", CHECKPOINT_DIR / "digits-vit-ln.pt2"],
                   engine="torch", batches=(3,), threads=1, rounds=3, warmup=1, memory=False)
    assert [r.model for r in report.results] == ["digits-vit-un", "digits-vit-ln"]
    assert report.results[0].shapes == {"images": [3, 1, 8, 8]}
    assert report.runtime.startswith("torch")
    assert np.isfinite(report.results[1].ratio.median)


def test_modules_in_memory_run_on_torch_beside_files() -> None:
    """A training script benches what it holds against a shipped file: the modules are named
    by their class, their modes are put back, no memory child is asked to load them (one
    can only load files); another engine refuses them."""
    from sample_models.registry import CHECKPOINT_DIR
    from tests.models import tiny_vit

    live, other = tiny_vit().train(), tiny_vit(seed=1)
    report = bench([live, other, CHECKPOINT_DIR / "digits-vit-un.pt2"], engine="torch",
                   batches=(2,), threads=1, rounds=3, warmup=1, memory=True,
                   inputs=bench_module.Inputs(shapes={"images": (2, 1, 8, 8)},
                                              dynamic=["batch"]))
    names = [r.model for r in report.results]
    assert names == ["VisionTransformer-1", "VisionTransformer-2", "digits-vit-un"]
    assert [r.memory is None for r in report.results] == [True, True, False]
    assert report.results[0].path == "<VisionTransformer in memory>"
    assert all(m.training for m in live.modules())
    with pytest.raises(UnfoldError, match=r"^a VisionTransformer in models: a model in memory "
                                          r"runs on engine='torch' only"):
        bench([live], engine="ort", rounds=2, memory=False)


def test_weights_trained_with_swap_norms_bench_with_swap(tmp_path: Path) -> None:
    """A state dict of a model trained after swap_norms, its LayerNorm factory and swap: timed,
    and its memory measured in a child process that loads it the same way."""
    import torch

    from tests.models import randomize_norms, tiny_vit
    from unfold.nn import swap_norms

    model, _ = swap_norms(tiny_vit(norm="ln"), kind="un")
    torch.save(randomize_norms(model).state_dict(), tmp_path / "w.pt")
    report = bench([tmp_path / "w.pt"], engine="torch", arch="tests.models:tiny_vit",
                   arch_kwargs={"norm": "ln"}, swap="un", batches=(2,), threads=1, rounds=2,
                   warmup=1, inputs=bench_module.Inputs(shapes=[(2, 1, 8, 8)]))
    (result,) = report.results
    assert result.memory is not None and result.memory.peak_mib > 0
    with pytest.raises(UnfoldError, match=r"^swap='ln': valid: un, pn, pn\*"):
        bench([tmp_path / "w.pt"], engine="torch", swap="ln")
