"""cli/_inputs.py and the CLI's spelling of the library's parameters: the command line's
strings become the typed values the library takes, a bad one fails naming its flag, and a
library message names the flag that gave the value."""

from __future__ import annotations

import pytest

from cli._common import cli_spelling
from cli._inputs import (
    input_options,
    parse_arch_kwargs,
    parse_dynamic,
    parse_shape,
    parse_shapes,
    parse_tolerance,
)
from unfold.errors import UnfoldError, option, python_spelling, spelled_as
from unfold.inputs import Inputs, check_inputs, specs_from_inputs
from unfold.verification.tolerances import resolve_tolerances


@pytest.mark.parametrize(("text", "expected"), [
    ("1x3x224x224", (None, (1, 3, 224, 224))), ("ids:1x128", ("ids", (1, 128))),
    ("7", (None, (7,))),
])
def test_parse_shape(text: str, expected: tuple) -> None:
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["1x3x", "ax3", "1,3,224", "ids:", "0x3", ""])
def test_parse_shape_rejects_with_the_expected_form(text: str) -> None:
    with pytest.raises(UnfoldError, match=f"--input-shape '{text}': expected dimensions like "
                                          f"1x3x224x224"):
        parse_shape(text)


def test_shapes_in_order_or_by_name() -> None:
    assert parse_shapes(["2x16", "2x16"]) == [(2, 16), (2, 16)]
    assert parse_shapes(["2x16", "mask:2x16"]) == {0: (2, 16), "mask": (2, 16)}
    assert parse_shapes([]) == []


def test_input_flags_become_inputs() -> None:
    inputs = input_options(["ids:2x16", "mask:2x16"], ["ids:int64", "mask:bool"], ["0,99"], [],
                           "batch,seq", None)
    assert inputs == Inputs(shapes={"ids": (2, 16), "mask": (2, 16)},
                            dtype={"ids": "int64", "mask": "bool"}, int_range=(0, 99),
                            dynamic=["batch", "seq"])
    assert input_options([], [], [], ["images:-1,1.5"], None, None).float_range == \
        {"images": (-1.0, 1.5)}


@pytest.mark.parametrize(("args", "message"), [
    ((["1x"], [], [], [], None), "--input-shape '1x': expected dimensions"),
    (([], ["int65"], [], [], None), "--input-dtype 'int65': valid: float32"),
    (([], ["ids:int64", "float32"], [], [], None),
     "--input-dtype ids:int64 float32: give one value for every input, or NAME:VALUE for each, "
     "not both"),
    (([], ["int64", "int32"], [], [], None), "--input-dtype given 2 times without input names"),
    (([], [], ["zzz"], [], None), "--int-range 'zzz': expected LOW,HIGH"),
    (([], [], ["0.5,1"], [], None), "--int-range '0.5,1'"),
    (([], [], [], ["a:x,1"], None), "--float-range 'a:x,1'"),
    (([], [], [], [], "batch,sideways"), "--dynamic 'batch,sideways': 'sideways' is not an axis"),
])
def test_bad_input_flags_name_the_flag_before_any_work(args: tuple, message: str) -> None:
    with pytest.raises(UnfoldError, match=message):
        input_options(*args, None)


def test_values_the_syntax_allows_are_checked_by_the_library_naming_the_flag() -> None:
    inputs = input_options([], [], ["ids:9,1"], [], None, None)
    with spelled_as(cli_spelling), pytest.raises(
            UnfoldError, match=r"^--int-range ids:9,1: a range is \(low, high\), two finite ints "
                               r"with low <= high, e.g. --int-range 0,30000$"):
        check_inputs(inputs)


def test_dynamic() -> None:
    assert parse_dynamic("batch, seq") == ["batch", "seq"]
    assert parse_dynamic(None) == []


def test_tolerances_for_every_output_or_by_name() -> None:
    assert parse_tolerance("--atol", ["1e-4"]) == 1e-4
    assert parse_tolerance("--atol", ["logits=1e-4", "ids=0"]) == {"logits": 1e-4, "ids": 0.0}
    assert parse_tolerance("--atol", []) is None
    for bad, message in (("-1", "expected a number >= 0"), ("x=inf", "expected a number >= 0"),
                         ("nan", "expected a number >= 0")):
        with pytest.raises(UnfoldError, match=f"--atol '{bad}': {message}"):
            parse_tolerance("--atol", [bad])
    with pytest.raises(UnfoldError, match="--rtol 1e-3 logits=1e-2: give one tolerance for "
                                          "every output, or OUTPUT=value for each, not both"):
        parse_tolerance("--rtol", ["1e-3", "logits=1e-2"])


def test_arch_kwargs_are_json_objects() -> None:
    assert parse_arch_kwargs('{"dim": 32}') == {"dim": 32}
    assert parse_arch_kwargs(None) is None
    with pytest.raises(UnfoldError, match="--arch-kwargs '{dim: 32}' is not JSON"):
        parse_arch_kwargs("{dim: 32}")
    with pytest.raises(UnfoldError, match="expected a JSON object"):
        parse_arch_kwargs("[32]")


@pytest.mark.parametrize(("parameter", "value", "python", "cli"), [
    ("atol", 1e-4, "atol=0.0001", "--atol 0.0001"),
    ("atol", {"logits": 1e-4}, "atol={'logits': 0.0001}", "--atol logits=0.0001"),
    ("inputs.shapes", (1, 128), "Inputs(shapes=[(1, 128)])", "--input-shape 1x128"),
    ("inputs.shapes", {"ids": (1, 128), "mask": (1, 128)},
     "Inputs(shapes={'ids': (1, 128), 'mask': (1, 128)})",
     "--input-shape ids:1x128 --input-shape mask:1x128"),
    ("inputs.shapes", [(2, 4), (2, 4)], "Inputs(shapes=[(2, 4), (2, 4)])",
     "--input-shape 2x4 --input-shape 2x4"),
    ("inputs.int_range", {"ids": (0, 9)}, "Inputs(int_range={'ids': (0, 9)})",
     "--int-range ids:0,9"),
    ("inputs.dynamic", ["batch", "seq"], "Inputs(dynamic=['batch', 'seq'])",
     "--dynamic batch,seq"),
    ("inputs.npz", "FILE.npz", "Inputs(npz='FILE.npz')", "--inputs FILE.npz"),
    ("trust", True, "trust=True", "--trust"),
    ("verify", False, "verify=False", "--no-verify"),
    ("batches", [1, 8, 64], "batches=[1, 8, 64]", "--batch 1,8,64"),
    ("max_scale", 1e3, "max_scale=1000.0", "--max-scale 1000"),
    ("skip", ["producer", "compose"], "skip=['producer', 'compose']",
     "--skip producer --skip compose"),
    ("arch_kwargs", {"dim": 48}, "arch_kwargs={'dim': 48}", """--arch-kwargs '{"dim": 48}'"""),
])
def test_a_parameter_is_spelled_as_the_caller_gives_it(parameter: str, value: object,
                                                       python: str, cli: str) -> None:
    assert python_spelling(parameter, value) == option(parameter, value) == python
    with spelled_as(cli_spelling):
        assert option(parameter, value) == cli
    assert option(parameter, value) == python, "the spelling ends with its block"


def test_a_library_error_names_the_flag_under_the_cli_and_the_parameter_in_python() -> None:
    def no_such_input() -> None:
        specs_from_inputs(["images"], Inputs(shapes={"x": (1, 1, 8, 8)}))

    with pytest.raises(UnfoldError, match=r"^Inputs\(shapes=\{'x': \(1, 1, 8, 8\)\}\): the "
                                          r"model has no input 'x'; its inputs: images$"):
        no_such_input()
    with spelled_as(cli_spelling), pytest.raises(
            UnfoldError, match=r"^--input-shape x:1x1x8x8: the model has no input 'x'"):
        no_such_input()
    dtypes = {"logits": "float32"}
    with pytest.raises(UnfoldError, match=r"^atol=\{'y': 0.1\}: no output 'y'; outputs: logits"):
        resolve_tolerances(dtypes, atol={"y": 0.1})
    with spelled_as(cli_spelling), pytest.raises(UnfoldError, match=r"^--atol y=0.1: no output"):
        resolve_tolerances(dtypes, atol={"y": 0.1})
