"""unfold.inputs: the command line's input options, random batches, real inputs from .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unfold.errors import UnfoldError
from unfold.inputs import (
    InputSpec,
    load_npz,
    parse_shape,
    random_batch,
    specs_from_arrays,
    specs_from_options,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("1x3x224x224", (None, (1, 3, 224, 224))), ("ids:1x128", ("ids", (1, 128))),
    ("7", (None, (7,))),
])
def test_parse_shape(text: str, expected: tuple) -> None:
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["1x3x", "ax3", "1,3,224", "ids:", "0x3", ""])
def test_parse_shape_rejects_with_the_expected_form(text: str) -> None:
    with pytest.raises(UnfoldError, match="1x3x224x224"):
        parse_shape(text)


def test_shapes_positional_and_named_with_dtypes_ranges_and_dynamic_axes() -> None:
    specs = specs_from_options(["ids", "mask"], shapes=["2x16", "mask:2x16"],
                               dtypes=["ids:int64", "mask:bool"], int_ranges=["0,99"],
                               dynamic="batch,seq")
    assert specs == [InputSpec("ids", (2, 16), "int64", (0, 99), {0: "batch", 1: "seq"}),
                     InputSpec("mask", (2, 16), "bool", None, {0: "batch", 1: "seq"})]
    assert specs[0].describe() == "ids: 2x16 int64 in [0, 99], dynamic batch, seq"


def test_command_line_overrides_what_the_model_says_and_keeps_the_rest() -> None:
    own = [InputSpec("x", (2, 4), "float32", (0.0, 1.0), {0: "batch"})]
    (spec,) = specs_from_options(["x"], shapes=["5x4"], defaults=own)
    assert spec == InputSpec("x", (5, 4), "float32", (0.0, 1.0), {0: "batch"})
    (spec,) = specs_from_options(["x"], shapes=[], float_ranges=["-2,2"], defaults=own)
    assert spec.value_range == (-2.0, 2.0)


def test_optional_inputs_are_used_only_when_named_and_keep_forward_order() -> None:
    optional = ["attention_mask", "token_type_ids"]
    (ids,) = specs_from_options(["input_ids"], shapes=["2x8"], optional_names=optional,
                                dtypes=["int64"], int_ranges=["0,9"])
    assert ids.name == "input_ids"
    specs = specs_from_options(["input_ids"], optional_names=optional,
                               shapes=["token_type_ids:2x8", "2x8"], dtypes=["int64"],
                               int_ranges=["input_ids:0,9", "token_type_ids:0,1"])
    assert [(s.name, s.value_range) for s in specs] == [("input_ids", (0, 9)),
                                                        ("token_type_ids", (0, 1))]
    with pytest.raises(UnfoldError, match=r"no input 'mask'; its inputs: input_ids \(optional, "
                                          r"used when given a shape: attention_mask, "
                                          r"token_type_ids\)"):
        specs_from_options(["input_ids"], optional_names=optional, shapes=["mask:2x8"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shapes": []}, "no shape for input"),
    ({"shapes": ["2x4", "2x4"]}, "takes 1 input"),
    ({"shapes": ["y:2x4"]}, "no input 'y'"),
    ({"shapes": ["2x4"], "dtypes": ["int64"]}, "--int-range"),
    ({"shapes": ["2x4"], "dtypes": ["complex"]}, "valid: float32"),
    ({"shapes": ["2x4"], "dtypes": ["int64"], "int_ranges": ["9,1"]}, "LOW,HIGH"),
    ({"shapes": ["2x4"], "dynamic": "time"}, "valid: batch, seq"),
])
def test_bad_options_name_what_was_given_and_what_is_valid(kwargs: dict, message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        specs_from_options(["x"], **kwargs)


def test_random_batches_respect_dtype_range_and_batch() -> None:
    specs = [InputSpec("ids", (2, 16), "int64", (3, 9)), InputSpec("img", (2, 3), "float32",
                                                                   (0.0, 1.0)),
             InputSpec("z", (2, 3)), InputSpec("m", (2, 3), "bool")]
    batch = random_batch(specs, np.random.default_rng(0), batch=5)
    assert batch["ids"].dtype == np.int64 and batch["ids"].shape == (5, 16)
    assert batch["ids"].min() >= 3 and batch["ids"].max() <= 9
    assert 0 <= batch["img"].min() and batch["img"].max() < 1
    assert batch["z"].dtype == np.float32 and batch["z"].min() < 0  # standard normal
    assert batch["m"].dtype == np.bool_
    again = random_batch(specs, np.random.default_rng(0), batch=5)
    assert all(np.array_equal(batch[k], again[k]) for k in batch), "seeded draws repeat"


def test_specs_from_example_arrays_take_their_ranges() -> None:
    (ids, img) = specs_from_arrays({"ids": np.array([[4, 7]]), "img": np.array([0.5, 0.25])},
                                   {"ids": {0: "batch"}})
    assert ids == InputSpec("ids", (1, 2), "int64", (4, 7), {0: "batch"})
    assert img.value_range == (0.25, 0.5)


def test_npz_by_name_and_by_order(tmp_path: Path) -> None:
    specs = [InputSpec("a", (2, 3), dynamic={0: "batch"}), InputSpec("b", (2,), "int64", (0, 1))]
    a, b = np.ones((4, 3), np.float32), np.zeros(2, np.int64)
    np.savez(tmp_path / "named.npz", b=b, a=a)
    np.savez(tmp_path / "ordered.npz", a, b)
    for name in ("named.npz", "ordered.npz"):
        arrays = load_npz(tmp_path / name, specs)
        assert list(arrays) == ["a", "b"] and arrays["a"].shape == (4, 3)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"a": np.ones((2, 3), np.float64)}, "a is float64, the model takes float32"),
    ({"a": np.ones((2, 4), np.float32)}, r"shape \(2, 4\), the model takes a: 2x3"),
    ({"c": np.ones((2, 3), np.float32)}, r"holds \['c'\]"),
])
def test_npz_that_does_not_fit_is_refused(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(UnfoldError, match=message):
        load_npz(tmp_path / "x.npz", [InputSpec("a", (2, 3), dynamic={0: "batch"})])


def test_npz_missing_or_not_an_npz(tmp_path: Path) -> None:
    with pytest.raises(UnfoldError, match="no such file"):
        load_npz(tmp_path / "none.npz", [])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UnfoldError, match="not a readable .npz"):
        load_npz(tmp_path / "bad.npz", [])
