"""Reading model.pt in every format, safely (DESIGN.md: nothing from a file runs without
`--trust`).

    loaded = unfold.load.load_model("model.pt2")
    loaded = unfold.load.load_model("weights.pt", arch="mypkg.models:vit_small",
                                    arch_kwargs={"dim": 384})
"""

from unfold.load.model_file import FORMATS, LoadedModel, load_model

__all__ = ["FORMATS", "LoadedModel", "load_model"]
