"""`unfold bench`: a table per batch on stdout, the JSON and the plot written where asked (and
never over a file without --force), every bad option exit 2 before anything runs, OpenVINO
as an engine."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.bench.test_bench import _dynamic_batch
from tests.fold.helpers import post_norm_stack
from tests.optional import import_or_skip

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cli-bench")
    paths = [folder / "un.onnx", folder / "none.onnx"]
    onnx.save(_dynamic_batch(post_norm_stack(2, 16)), paths[0])
    onnx.save(_dynamic_batch(post_norm_stack(2, 16, norm=False)), paths[1])
    return paths


def _invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_a_table_per_batch_and_the_files_asked_for(pair: list[Path], tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = _invoke("bench", *pair, "--batch", "1,2", "--rounds", "4", "--threads", "1",
                     "--baseline", "none", "--no-memory", "--json", out, "--plot", png)
    assert result.exit_code == 0, result.output
    for text in ("batch 1: onnxruntime", "batch 2: onnxruntime", "/ none [95%]",
                 "1 (baseline)", "4 rounds interleaved after 3 warm-up"):
        assert text in result.stdout, text
    data = json.loads(out.read_text())
    assert [(r["model"], r["batch"]) for r in data["results"]] == [
        ("un", 1), ("none", 1), ("un", 2), ("none", 2)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in result.stderr and f"wrote {png}" in result.stderr
    again = _invoke("bench", *pair, "--rounds", "2", "--no-memory", "--json", out)
    assert again.exit_code == 2 and f"{out} exists; pass --force" in again.stderr
    assert json.loads(out.read_text()) == data, "the earlier result is kept"


@pytest.mark.parametrize(("args", "message"), [
    (["--batch", "1,x"], "--batch '1,x': expected positive batch sizes"),
    (["--rounds", "1"], "--rounds 1: at least 2"),
    (["--rounds", "3", "--seconds", "2"], "give --rounds or --seconds, not both"),
    (["--threads", "0"], "--threads 0: must be at least 1"),
    (["--baseline", "ln"], "--baseline ln: not one of the models: un, none"),
    (["--engine", "nosuch"], "'nosuch' is not an engine"),
])
def test_bad_options_exit_2_and_write_nothing(pair: list[Path], tmp_path: Path,
                                              args: list[str], message: str) -> None:
    result = _invoke("bench", *pair, *args, "--json", tmp_path / "r.json")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "r.json").exists()


def test_openvino_runs_the_same_models(pair: list[Path]) -> None:
    import_or_skip("openvino")
    result = _invoke("bench", *pair, "--engine", "openvino", "--rounds", "3", "--threads", "1",
                     "--no-memory")
    assert result.exit_code == 0, result.output
    assert "batch 1: openvino" in result.stdout


def test_a_state_dict_on_torch_takes_the_architecture_and_its_arguments(tmp_path: Path) -> None:
    import torch

    from tests.models import tiny_vit

    torch.save(tiny_vit(dim=16).state_dict(), tmp_path / "vit16.pt")
    args = ("bench", tmp_path / "vit16.pt", "--engine", "torch", "--arch",
            "tests.models:tiny_vit", "--input-shape", "1x1x8x8", "--rounds", "2", "--no-memory")
    result = _invoke(*args, "--arch-kwargs", '{"dim": 16}')
    assert result.exit_code == 0, result.output
    assert "vit16" in result.stdout
    result = _invoke(*args)  # (the factory's default, dim 32, is not what was saved)
    assert result.exit_code == 2 and "does not fit --arch tests.models:tiny_vit" in result.stderr
    result = _invoke(*args, "--arch-kwargs", '{"dim": 16}', "--batch", "1,3")
    assert result.exit_code == 2 and "batch 3 cannot apply (give --dynamic batch, or bench at " \
        "--batch 1)" in result.stderr, result.stderr
    result = _invoke(*args, "--arch-kwargs", '{"dim": 16}', "--batch", "1,3", "--dynamic", "batch")
    assert result.exit_code == 0, result.output
    assert "batch 3:" in result.stdout
