"""The export layer stands on torch and onnx alone (DESIGN.md, layers): importing every module
of `unfold.export`, and exporting a model, loads no engine (`unfold.engines`, nor an engine's
package)."""

from __future__ import annotations

import json
import subprocess
import sys

ENGINES = ("unfold.engines", "onnxruntime", "openvino", "tensorrt")  # the runners, their packages


def test_export_loads_no_engine() -> None:
    code = (
        "import json, pkgutil, sys\n"
        "from pathlib import Path\n"
        "import torch\n"
        "import unfold.export\n"
        "from unfold.inputs import InputSpec\n"
        "from unfold.load import LoadedModel\n"
        "for module in pkgutil.iter_modules(unfold.export.__path__, 'unfold.export.'):\n"
        "    __import__(module.name)\n"
        "loaded = LoadedModel(torch.nn.Linear(3, 2).eval(), Path('m'), 'pickled module', ['x'])\n"
        "unfold.export.export_onnx(loaded, [InputSpec('x', (1, 3))], exporter='torchscript')\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({ENGINES!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"unfold.export loaded {loaded}"
