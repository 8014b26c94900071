"""fold_model end to end: the shipped, trained digits ViT (pre-norm) and translation model
(post-norm encoder-decoder), and a BERT-like post-norm encoder built here, each measured against
the same architecture exported with its norms replaced by Identity (the no-norm twin)."""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from sample_models.bert import bert_base
from sample_models.registry import CHECKPOINT_DIR
from sample_models.swin import swin_tiny_like
from sample_models.translation import TranslationTransformer
from sample_models.vit import digits_vit
from tests.optional import import_or_skip
from tests.sample_models.test_checkpoints import load_from_state_dict
from unfold.fold import fold_model
from unfold.nn import UnifiedNorm

from .helpers import assert_same_outputs


def twin_ops(twin: onnx.ModelProto) -> Counter[str]:
    """The no-norm twin's op counts after the same constant folding fold_model applies."""
    folded_twin, report = fold_model(twin)
    assert report.sites == [], "the twin has no norm"
    return report.ops_after


def _export(model: torch.nn.Module, args: tuple, names: list[str],
            dynamic_shapes: tuple | None = None, dynamo: bool = True) -> onnx.ModelProto:
    """dynamo=False: the TorchScript exporter, dynamic batch when `dynamic_shapes` is given."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model.eval(), args, buffer, dynamo=True, input_names=names,
                              dynamic_shapes=dynamic_shapes)
        else:
            torch.onnx.export(model.eval(), args, buffer, dynamo=False, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names}
                              if dynamic_shapes else None)
    return onnx.load_from_string(buffer.getvalue())


def _export_digits(model: torch.nn.Module) -> onnx.ModelProto:
    return _export(model, (torch.rand(2, 1, 8, 8),), ["images"],
                   dynamic_shapes=({0: torch.export.Dim("batch")},))


@pytest.mark.slow
def test_digits_vit_folds_to_the_no_norm_twin() -> None:
    original = _export_digits(load_from_state_dict("digits-vit-un"))
    folded, report = fold_model(original)

    assert len(report.sites) == 9, [s.name for s in report.sites]
    assert [s.status for s in report.sites] == ["folded"] * 9, \
        [(s.name, s.reasons) for s in report.left]
    (final,) = [s for s in report.sites if s.path]
    assert final.path == ["moved past Gather 'node_select'"], "final norm -> cls token -> head"
    assert report.ops_after == twin_ops(_export_digits(digits_vit(norm="none"))), \
        "the folded graph has the no-norm twin's op counts"
    images = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    assert_same_outputs(original, folded, {"images": images})



def _randomize_norm_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained offline norms are near identity; give them real per-channel constants."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, UnifiedNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.num_channels, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.num_channels, generator=gen))
                module.running_var.copy_(torch.rand(module.num_channels, generator=gen) + 0.3)
    return model.eval()


def test_bert_like_post_norm_encoder_folds_to_the_no_norm_twin() -> None:
    kwargs = dict(dim=32, depth=3, heads=4, ffn_dim=64, vocab=50, seed=0)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    original = _export(_randomize_norm_statistics(bert_base("un", **kwargs)), (ids, mask),
                            ["input_ids", "attention_mask"])
    folded, report = fold_model(original)
    assert len(report.sites) == 7, "the embedding norm and 2 per layer"
    assert bool(report), [(s.name, s.status, s.reasons) for s in report.left]
    twin = _export(bert_base("none", **kwargs), (ids, mask), ["input_ids", "attention_mask"])
    assert report.ops_after == twin_ops(twin)
    assert_same_outputs(original, folded,
                        {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})


@pytest.mark.slow
def test_trained_post_norm_translation_model_folds_to_the_no_norm_twin() -> None:
    """Through the TorchScript exporter (the dynamo export of this model is converted and
    checked in tests/test_pipeline.py)."""
    model = load_from_state_dict("numbers-enfr-un")
    src = torch.tensor([[5, 9, 12, 7, 2, 0], [4, 8, 2, 0, 0, 0]])
    prev = torch.tensor([[1, 6, 11, 4, 9], [1, 3, 8, 0, 0]])
    names = ["src_tokens", "prev_output_tokens"]
    original = _export(model, (src, prev), names, dynamo=False)
    folded, report = fold_model(original)
    assert len(report.sites) == 12, "2 embedding norms, 2 per encoder layer, 3 per decoder layer"
    assert not report.left, [(s.name, s.status, s.reasons) for s in report.left]
    # the embedding norms go into the embedding sums' constant parts; the decoder's stream
    # (the 6 norms composed on the way) ends at the bias-less output projection, at the graph
    # output
    assert [s.status for s in report.sites].count("materialized") == 6
    arch = json.loads((CHECKPOINT_DIR / "numbers-enfr-un.arch.json").read_text())
    torch.manual_seed(0)
    twin_model = TranslationTransformer(**{**arch["arch_kwargs"], "norm": "none"})
    twin = _export(twin_model, (src, prev), names, dynamo=False)
    # The output projection is tied to the embedding and has no bias: the last norm's shift
    # becomes one bias Add at the graph output (DESIGN's allowed materialization).
    assert report.ops_after == twin_ops(twin) + Counter({"Add": 1})
    assert_same_outputs(original, folded, {"src_tokens": src.numpy(),
                                           "prev_output_tokens": prev.numpy()})


@pytest.mark.slow
def test_hugging_face_bert_folds_to_one_affine_at_its_output() -> None:
    """BertModel returns the encoder's last (post-)norm as `last_hidden_state`: the embedding
    norm folds into the embedding tables; the other four, carried down the residual stream and
    composed, end as the one Mul and one Add the design allows at a graph output (the pooler
    reads that same tensor, and takes the affine itself)."""
    transformers = import_or_skip("transformers")
    from tests.models import HF_VOCAB, tiny_hf_bert

    ids = torch.randint(0, HF_VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    names = ["input_ids", "attention_mask"]
    original = _export(tiny_hf_bert(), (ids, mask), names)
    folded, report = fold_model(original)
    assert len(report.sites) == 5, "the embedding norm and 2 per layer"
    assert [s.status for s in report.sites] == ["folded"] + ["materialized"] * 4, \
        [(s.name, s.status, s.reasons) for s in report.sites]
    assert report.sites[0].path == ["folded into the embedding tables 'node_embedding'"] or \
        report.sites[0].path[0].startswith("folded into the embedding tables"), \
        report.sites[0].path
    twin_model, _ = swap_to_identity(transformers.BertModel(tiny_hf_bert().config))
    twin = _export(twin_model, (ids, mask), names)
    assert report.ops_after == twin_ops(twin) + Counter({"Mul": 1, "Add": 1})
    assert_same_outputs(original, folded, {"input_ids": ids.numpy(),
                                           "attention_mask": mask.numpy()})


def swap_to_identity(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """The no-norm twin: every LayerNorm replaced by Identity."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                setattr(module, child_name, torch.nn.Identity())
                count += 1
    return model.eval(), count


# three stages, so a pending shift from the first patch merging crosses the second
SWIN = dict(img_size=32, patch_size=4, dim=16, depths=(2, 2, 1), heads=(2, 4, 8), window=4,
            num_classes=10)


def _export_swin(norm: str) -> onnx.ModelProto:
    """With the TorchScript exporter (the other e2e tests use dynamo), dynamic batch."""
    model = _randomize_norm_statistics(swin_tiny_like(norm, **SWIN))
    return _export(model, (torch.rand(2, 3, 32, 32),), ["images"],
                   dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=False)


@pytest.mark.slow
def test_swin_like_hierarchical_model_folds_to_the_no_norm_twin() -> None:
    """Window reshapes, shifted windows (torch.roll: Slice/Slice/Concat), patch merging, a
    patch-embed Conv -> flatten -> transpose -> patch norm (rule 2), mean pooling."""
    original = _export_swin("un")
    folded, report = fold_model(original)
    assert len(report.sites) == 14, "patch norm, 2 per block x 5, 2 patch mergings, final"
    assert [s.status for s in report.sites] == ["folded"] * 14, \
        [(s.name, s.status, s.reasons) for s in report.left]
    paths = [step for s in report.sites for step in s.path]
    assert any(step.startswith("folded into its producer Conv") for step in paths)
    # torch.roll (two Slices and a Concat per rolled axis) in the shifted-window block (the
    # last stage's window covers its whole grid: no shift there)
    assert sum(step.startswith("moved past Concat") for step in paths) == 2
    # PatchMerging's reduction Linear has no bias: its norm's shift b @ W goes into the next
    # block's norm and, at the residual Add, into the attention branch's output bias
    assert sum(step.startswith("shift moved into the other operand") for step in paths) == 2
    assert report.ops_after == twin_ops(_export_swin("none"))
    images = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    assert_same_outputs(original, folded, {"images": images})


def _with_custom_ops() -> onnx.ModelProto:
    """norm -> a `MatMul` of the domain com.example (whatever it computes, it is not ONNX's)
    and norm -> a com.example `Mul` by a per-channel constant -> ONNX's MatMul."""
    from onnx import helper

    from .helpers import RNG, const, norm_constants

    nodes = [helper.make_node("Mul", ["x", "norm.scale"], ["s"], name="norm_mul"),
             helper.make_node("Add", ["s", "norm.shift"], ["n"], name="norm_add"),
             helper.make_node("MatMul", ["n", "W"], ["y"], name="custom_matmul",
                              domain="com.example"),
             helper.make_node("Mul", ["n", "k"], ["m"], name="custom_mul", domain="com.example"),
             helper.make_node("MatMul", ["m", "W2"], ["z"], name="onnx_matmul")]
    inits = [*norm_constants(4), const("W", RNG.normal(size=(4, 3))),
             const("k", RNG.uniform(0.5, 2, 4)), const("W2", RNG.normal(size=(4, 3)))]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [2, 4])],
                              [helper.make_tensor_value_info("y", f, [2, 3]),
                               helper.make_tensor_value_info("z", f, [2, 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.example", 1)])
    m.ir_version = 8
    return m


def test_ops_of_another_domain_are_not_onnx_ops() -> None:
    """A com.example MatMul is no sink and a com.example Mul no norm site: neither may be
    folded into (before, the norm went into the custom MatMul's weight: a wrong graph)."""
    m = _with_custom_ops()
    folded, report = fold_model(m)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in folded.graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    custom = {n.name: n for n in folded.graph.node if n.domain == "com.example"}
    assert set(custom) == {"custom_matmul", "custom_mul"}
    assert custom["custom_matmul"].op_type == "MatMul" and custom["custom_mul"].op_type == "Mul"
    np.testing.assert_array_equal(weights[custom["custom_matmul"].input[1]], original["W"])
    np.testing.assert_array_equal(weights[custom["custom_mul"].input[1]], original["k"])
    (site,) = report.sites
    assert site.status != "folded" and "custom_matmul" not in site.absorbed_by
    # what the custom ops read is the norm's true output, computed as before
    producer = {o: n for n in folded.graph.node for o in n.output}
    norm_out = custom["custom_matmul"].input[0]
    assert custom["custom_mul"].input[0] == norm_out
    assert producer[norm_out].op_type in ("Add", "Mul")


def test_two_initializers_of_one_name_are_refused() -> None:
    from unfold.errors import UnfoldError

    m = _with_custom_ops()
    m.graph.initializer.append(m.graph.initializer[2])  # a second 'W'
    with pytest.raises(UnfoldError, match="two initializers named 'W'"):
        fold_model(m)
