"""A state dict saved from the UN authors' UN1d (hikvision-research/Unified-Normalization:
buffers running_var, ema_gz, iters, buffer_x2, buffer_gz, skip_counter) loads into
unfold.nn.UnifiedNorm as it is: every buffer under this layer's name, the eval output the
same; and a model built with their layer converts from its weights with --arch, as any
factory does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import unfold
from tests.zoo.authors_cases import AuthorsUN1d, T2TViT, randomize
from unfold.engines.ort import OrtRunner
from unfold.nn import UnifiedNorm

C, WINDOW = 12, 4


def _trained_theirs(seed: int = 0) -> AuthorsUN1d:
    """Their layer with every buffer as training leaves it (made up here: nothing of theirs
    runs in the tests)."""
    gen = torch.Generator().manual_seed(seed)
    layer = randomize(AuthorsUN1d(C, window_size=WINDOW), seed)
    with torch.no_grad():
        layer.ema_gz.copy_(torch.randn(C, generator=gen))
        layer.buffer_x2.copy_(0.5 + torch.rand(WINDOW, C, generator=gen))
        layer.buffer_gz.copy_(torch.randn(WINDOW, C, generator=gen))
        layer.iters.fill_(5003)
        layer.skip_counter.fill_(7)
    return layer.eval()


def test_their_state_dict_loads_strictly_under_our_names() -> None:
    theirs = _trained_theirs()
    ours = UnifiedNorm(C, window_size=WINDOW)
    ours.load_state_dict(theirs.state_dict())  # strict: every key placed, none left over
    torch.testing.assert_close(ours.forward_window, theirs.buffer_x2, rtol=0, atol=0)
    torch.testing.assert_close(ours.backward_window, theirs.buffer_gz, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_grad, theirs.ema_gz, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
    assert ours.num_steps.shape == () and int(ours.num_steps) == 5003
    assert ours.num_outliers.shape == () and int(ours.num_outliers) == 7
    x = torch.randn(2, 9, C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs(x), rtol=1e-6, atol=1e-6)
    # our own state dict still loads as ours
    again = UnifiedNorm(C, window_size=WINDOW)
    again.load_state_dict(ours.state_dict())
    assert int(again.num_steps) == 5003


def _swap_authors_layers(model: torch.nn.Module) -> torch.nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AuthorsUN1d):
                setattr(parent, name, UnifiedNorm(child.num_features))
    return model


def test_a_model_of_theirs_goes_on_as_ours_and_converts_with_arch(tmp_path: Path) -> None:
    """Weights of a T2T-ViT built with their layer: loaded into the same architecture built
    with UnifiedNorm (to train on with this one), and converted from the file with --arch
    naming their architecture's factory."""
    torch.manual_seed(0)
    theirs = randomize(T2TViT(False)).eval()
    torch.save(theirs.state_dict(), tmp_path / "t2t.pt")
    torch.manual_seed(0)
    ours = _swap_authors_layers(T2TViT(False))
    ours.load_state_dict(torch.load(tmp_path / "t2t.pt", weights_only=True))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs(images)
        torch.testing.assert_close(ours.eval()(images), expected, rtol=1e-5, atol=1e-5)
    report = unfold.convert(tmp_path / "t2t.pt", tmp_path / "t2t.onnx",
                            arch="tests.zoo.authors_cases:t2t_vit",
                            inputs=unfold.Inputs(shapes=[(2, 3, 32, 32)]))
    assert report, report.to_dict()
    got = OrtRunner(tmp_path / "t2t.onnx").run({report.inputs[0].name: images.numpy()})
    np.testing.assert_allclose(next(iter(got.values())), expected.numpy(), rtol=0,
                               atol=1e-5 * float(expected.abs().max()))
