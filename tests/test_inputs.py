"""unfold.inputs: what the caller says of the inputs (`Inputs`), random batches, real inputs
from .npz. (The command line's strings: tests/cli/test_inputs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unfold.errors import UnfoldError
from unfold.inputs import (
    Inputs,
    InputSpec,
    check_inputs,
    load_npz,
    random_batch,
    specs_from_arrays,
    specs_from_inputs,
)


def test_shapes_positional_and_named_with_dtypes_ranges_and_dynamic_axes() -> None:
    specs = specs_from_inputs(["ids", "mask"], Inputs(
        shapes={0: (2, 16), "mask": (2, 16)}, dtype={"ids": "int64", "mask": "bool"},
        int_range=(0, 99), dynamic=["batch", "seq"]))
    assert specs == [InputSpec("ids", (2, 16), "int64", (0, 99), {0: "batch", 1: "seq"}),
                     InputSpec("mask", (2, 16), "bool", None, {0: "batch", 1: "seq"})]
    assert specs[0].describe() == "ids: 2x16 int64 in [0, 99], dynamic batch, seq"


def test_what_the_caller_says_overrides_what_the_model_says_and_keeps_the_rest() -> None:
    own = [InputSpec("x", (2, 4), "float32", (0.0, 1.0), {0: "batch"})]
    (spec,) = specs_from_inputs(["x"], Inputs(shapes=[(5, 4)]), defaults=own)
    assert spec == InputSpec("x", (5, 4), "float32", (0.0, 1.0), {0: "batch"})
    (spec,) = specs_from_inputs(["x"], Inputs(float_range=(-2, 2)), defaults=own)
    assert spec.value_range == (-2.0, 2.0)


def test_optional_inputs_are_used_only_when_named_and_keep_forward_order() -> None:
    optional = ["attention_mask", "token_type_ids"]
    (ids,) = specs_from_inputs(["input_ids"], Inputs(shapes=[(2, 8)], dtype="int64",
                                                     int_range=(0, 9)),
                               optional_names=optional)
    assert ids.name == "input_ids"
    specs = specs_from_inputs(["input_ids"], Inputs(
        shapes={"token_type_ids": (2, 8), 0: (2, 8)}, dtype="int64",
        int_range={"input_ids": (0, 9), "token_type_ids": (0, 1)}), optional_names=optional)
    assert [(s.name, s.value_range) for s in specs] == [("input_ids", (0, 9)),
                                                        ("token_type_ids", (0, 1))]
    with pytest.raises(UnfoldError, match=r"no input 'mask'; its inputs: input_ids \(optional, "
                                          r"used when given a shape: attention_mask, "
                                          r"token_type_ids\)"):
        specs_from_inputs(["input_ids"], Inputs(shapes={"mask": (2, 8)}),
                          optional_names=optional)


@pytest.mark.parametrize(("inputs", "message"), [
    (Inputs(), r"no shape for input\(s\) x: give one for each, e.g. "
               r"Inputs\(shapes=\{'x': \(1, 128\)\}\)"),
    (Inputs(shapes=[(2, 4), (2, 4)]), r"Inputs\(shapes=\[\(2, 4\), \(2, 4\)\]\): 2 shape\(s\) "
                                      r"in input order, but the model takes 1 input"),
    (Inputs(shapes={"y": (2, 4)}), r"Inputs\(shapes=\{'y': \(2, 4\)\}\): the model has no input"),
    (Inputs(shapes=[(2, 4)], dtype="int64"), r"Inputs\(int_range=\{'x': \(0, 30000\)\}\)"),
    (Inputs(shapes=[(2, 4)], dtype="complex"), r"Inputs\(dtype='complex'\): valid dtypes: "
                                               r"float32"),
    (Inputs(shapes=[(2, 4)], dtype={"y": "int64"}), r"Inputs\(dtype=\{'y': 'int64'\}\): the "
                                                    r"model has no input 'y'"),
    (Inputs(shapes=[(2, 4)], int_range=(9, 1)), r"Inputs\(int_range=\(9, 1\)\): a range is "
                                                r"\(low, high\)"),
    (Inputs(shapes=[(2, 4)], dynamic=["time"]), r"'time' is not an axis name; valid: batch, seq"),
])
def test_bad_inputs_name_the_parameter_as_given_and_what_is_valid(inputs: Inputs,
                                                                  message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        specs_from_inputs(["x"], inputs)


@pytest.mark.parametrize(("inputs", "message"), [
    # the command line's strings are the CLI's: the library takes Python values
    (Inputs(shapes="1x3x8x8"), r"Inputs\(shapes='1x3x8x8'\): expected shapes in input order, "
                               r"e.g. Inputs\(shapes=\[\(1, 3, 224, 224\)\]\)"),
    (Inputs(shapes=["1x3x8x8"]), r"Inputs\(shapes=\['1x3x8x8'\]\): a shape is a tuple of "
                                 r"positive ints"),
    (Inputs(shapes={"x": (1, 0)}), r"Inputs\(shapes=\{'x': \(1, 0\)\}\): a shape is"),
    (Inputs(int_range="0,9"), r"Inputs\(int_range='0,9'\): a range is \(low, high\), two "
                              r"finite ints"),
    (Inputs(float_range={"x": (0, float("nan"))}), r"Inputs\(float_range=\{'x': \(0, nan\)\}\)"),
    (Inputs(dtype={1: "int64"}), r"keys are input names \(str\), not int"),
    (Inputs(dynamic="batch,seq"), r"Inputs\(dynamic='batch,seq'\): expected axis names, e.g. "
                                  r"Inputs\(dynamic=\['batch', 'seq'\]\)"),
])
def test_inputs_are_checked_before_the_model_is_known(inputs: Inputs, message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        check_inputs(inputs)


@pytest.mark.parametrize(("inputs", "message"), [
    (Inputs(shapes={"x": (2, 4), 0: (2, 4)}), r"input x is given two shapes"),
    (Inputs(shapes=[(2, 4)], dtype="int32", int_range=(0, 2**40)),
     r"^Inputs\(int_range=\(0, 1099511627776\)\): input x is int32, which holds -2147483648 to "
     r"2147483647$"),
    (Inputs(shapes=[(2, 4)], int_range=(0, 2**70), dtype="int64"),
     r"input x is int64, which holds"),
    (Inputs(shapes=[(2, 4)], dtype="float16", float_range=(0, 1e6)),
     r"input x is float16, which holds -65504 to 65504"),
])
def test_what_an_input_cannot_take_is_refused(inputs: Inputs, message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        specs_from_inputs(["x"], inputs)


def test_none_for_dynamic_is_no_dynamic_axes_and_dtypes_are_strings() -> None:
    assert specs_from_inputs(["x"], Inputs(shapes=[(2, 4)], dynamic=None))[0].dynamic == {}
    with pytest.raises(UnfoldError, match=r"^Inputs\(dtype=\['int64'\]\): valid dtypes"):
        check_inputs(Inputs(dtype=["int64"]))


def test_a_range_for_no_input_of_its_kind_is_an_error() -> None:
    ids = InputSpec("ids", (2, 8), "int64", (0, 9))
    with pytest.raises(UnfoldError, match=r"Inputs\(float_range=\(0.0, 1.0\)\): the model has "
                                          r"no float input to apply it to; its inputs: ids"):
        specs_from_inputs(["ids"], Inputs(float_range=(0, 1)), defaults=[ids])
    with pytest.raises(UnfoldError, match="input ids is not a float input"):
        specs_from_inputs(["ids"], Inputs(float_range={"ids": (0, 1)}), defaults=[ids])


def test_inputs_round_trip_through_json() -> None:
    inputs = Inputs(shapes={"ids": (2, 8), 1: (2, 8)}, dtype={"ids": "int64"},
                    int_range={"ids": (0, 9)}, dynamic=["batch"], npz="real.npz")
    again = Inputs.from_json(json.loads(json.dumps(inputs.to_json())))
    assert specs_from_inputs(["ids", "mask"], again) == \
        specs_from_inputs(["ids", "mask"], inputs) != []


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
