"""`import unfold.nn` must load nothing but torch: a training job depends on the layers without
the deployment stack (DESIGN.md, layers)."""

from __future__ import annotations

import json
import subprocess
import sys

DEPLOYMENT_STACK = ["onnx", "onnxruntime", "onnx_graphsurgeon", "onnxscript", "typer", "rich",
                    "tensorrt", "cli"]


def test_import_unfold_nn_loads_no_deployment_package() -> None:
    code = (
        "import json, sys\n"
        "import unfold.nn\n"
        "unfold.nn.UnifiedNorm(4)(__import__('torch').randn(2, 4))\n"
        f"print(json.dumps([m for m in {DEPLOYMENT_STACK!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import unfold.nn loaded {loaded}"
