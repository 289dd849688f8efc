"""Argument checks and device parsing: one message shape, naming the argument and the value."""

from __future__ import annotations

import math

import pytest

from engine.checks import check_bool, check_choice, check_int, check_number, check_optional_int, check_str
from engine.config import PipelineSettings, parse_pipeline
from engine.device import CPU, Device, parse_device
from engine.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "low", "high", "message"),
    [
        (0, 1, None, "n: expected a positive integer, got 0"),
        (-1, 0, None, "n: expected a non-negative integer, got -1"),
        (True, 1, None, "n: expected a positive integer, got True"),
        (1.5, None, None, "n: expected an integer, got 1.5"),
        ("3", 1, None, "n: expected a positive integer, got '3'"),
        (11, 1, 10, "n: expected an integer >= 1 and <= 10, got 11"),
    ],
)
def test_check_int_refuses_with_one_line(
    value: object, low: int | None, high: int | None, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        check_int("n", value, low=low, high=high)
    assert str(error.value) == message


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "1", None, -0.5])
def test_check_number_refuses_non_finite_bools_strings_and_out_of_range(value: object) -> None:
    with pytest.raises(ConfigError, match="x: expected a number >= 0"):
        check_number("x", value, low=0)


def test_checks_return_the_value_converted() -> None:
    assert check_number("x", 3, low=0) == 3.0 and isinstance(check_number("x", 3), float)
    assert check_int("n", 5, low=1, high=5) == 5
    assert check_optional_int("n", None, low=1) is None
    assert check_bool("b", False) is False
    assert check_choice("c", "a", ("a", "b")) == "a"
    assert check_str("s", "x") == "x"
    with pytest.raises(ConfigError, match="b: expected true or false, got 1"):
        check_bool("b", 1)
    with pytest.raises(ConfigError, match="c: expected one of a, b, got 'z'"):
        check_choice("c", "z", ("a", "b"))
    with pytest.raises(ConfigError, match="check_number: expected a number > 0"):
        check_number("check_number", 0, low=0, low_open=True)


@pytest.mark.parametrize(
    ("text", "device"),
    [
        ("cpu", CPU),
        ("cuda", Device("cuda", 0)),
        ("cuda:1", Device("cuda", 1)),
        ("cuda:12", Device("cuda", 12)),
    ],
)
def test_parse_device(text: str, device: Device) -> None:
    assert parse_device(text) == device
    assert parse_device(device) is device
    assert str(device) in ("cpu", f"cuda:{device.index}")


@pytest.mark.parametrize("text", ["gpu", "CPU", "cpu:0", "cuda:x", " cuda", "", "tpu", 3])
def test_parse_device_refuses_everything_else_the_same_way(text: object) -> None:
    with pytest.raises(ConfigError, match="device: expected 'cpu', 'cuda' or 'cuda:N'"):
        parse_device(text)  # type: ignore[arg-type]


def test_settings_are_validated_once_wherever_they_come_from(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="device: expected"):
        PipelineSettings(device="gpu")  # type: ignore[arg-type]
    spec = parse_pipeline({"stages": [{"stage": "track"}]}, config_dir=tmp_path)  # type: ignore[arg-type]
    assert spec.override(workers=None) == spec  # options not given change nothing
    assert spec.override(device="cuda:1").settings.device == Device("cuda", 1)
    with pytest.raises(ConfigError, match="^--batch-size: expected an integer >= 1 and <= 256, got 0$"):
        spec.override(from_cli=True, batch_size=0)
    with pytest.raises(ConfigError, match="^batch_size: expected an integer >= 1 and <= 256, got 0$"):
        spec.override(batch_size=0)
    with pytest.raises(ConfigError, match="unknown setting 'speed'"):
        spec.override(speed=3)
