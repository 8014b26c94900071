"""The README's "Models in" and "Precision in the graph" examples, run as written: every
fenced block after an `<!-- example: NAME -->` marker, in order, in one fresh folder (Python
blocks by this interpreter with the checkout on its path, shell blocks by bash with this
environment's `unfold` first on PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optional import import_or_skip

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- example: ([\w-]+) -->\n```(python|sh)\n(.*?)```", re.S)


def blocks(name: str) -> list[tuple[str, str]]:
    found = [(lang, code) for example, lang, code in BLOCK.findall(
        (ROOT / "README.md").read_text()) if example == name]
    assert found, f"the README has no example {name!r}"
    return found


def run_example(name: str, folder: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for lang, code in blocks(name):
        command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-ec", code]
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, f"README example {name!r}, {lang} block:\n{code}\n" \
                                     f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_a_module_in_memory(tmp_path: Path) -> None:
    run_example("module", tmp_path)
    assert (tmp_path / "live.onnx").is_file()


def test_a_hugging_face_directory(tmp_path: Path) -> None:
    import_or_skip("transformers")
    run_example("hf", tmp_path)
    assert (tmp_path / "bert-un" / "config.json").is_file()
    assert (tmp_path / "bert-un.onnx").is_file()


def test_precision_in_the_graph(tmp_path: Path) -> None:
    run_example("precision", tmp_path)
    for name in ("digits-fp16.onnx", "digits.onnx", "digits-int8.onnx"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.timm
def test_a_timm_state_dict_with_swap(tmp_path: Path) -> None:
    import_or_skip("timm")
    run_example("timm", tmp_path)
    assert (tmp_path / "vit-un.onnx").is_file()
