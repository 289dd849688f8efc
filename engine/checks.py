"""Argument checks, one line per argument, in the spirit of kornia's ``KORNIA_CHECK``.

Each check raises :class:`engine.errors.ConfigError` with a message that names the argument,
what was expected and the value given, and returns the value (converted where that is the
point: :func:`check_number` returns a ``float``), so a constructor reads::

    self.confidence = check_number("confidence", confidence, low=0.0, high=1.0)
    self.max_detections = check_int("max_detections", max_detections, low=1)

Booleans are never taken for numbers (``True`` is an ``int`` in Python, never in a config),
and NaN and infinities are never in range.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, TypeVar

from engine.errors import ConfigError

T = TypeVar("T")


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " and ".join(parts)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` is an integer (not a bool) within ``[low, high]``.

    Raises:
        ConfigError: Naming ``name``, the range and the value.
    """
    ok = _is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low == 1 and high is None:
            expected = "a positive integer"
        elif low == 0 and high is None:
            expected = "a non-negative integer"
        else:
            bounds = _range_text(low, high, False)
            expected = f"an integer{' ' + bounds if bounds else ''}"
        raise ConfigError(f"{name}: expected {expected}, got {shown(value)}")
    return int(value)


def check_optional_int(
    name: str, value: Any, *, low: int | None = None, high: int | None = None
) -> int | None:
    """None, or what :func:`check_int` accepts."""
    return None if value is None else check_int(name, value, low=low, high=high)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` is a finite real number (not a bool) within its bounds; returns it as float.

    Args:
        name: The argument's name, for the message.
        value: What was given.
        low: Smallest allowed value (None: no lower bound).
        high: Largest allowed value (None: no upper bound).
        low_open: True when ``low`` itself is not allowed (``> low``).

    Raises:
        ConfigError: Naming ``name``, the range and the value.
    """
    ok = _is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = _range_text(low, high, low_open)
        raise ConfigError(f"{name}: expected a number{' ' + bounds if bounds else ''}, got {shown(value)}")
    return float(value)


def check_optional_number(
    name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float | None:
    """None, or what :func:`check_number` accepts."""
    return None if value is None else check_number(name, value, low=low, high=high, low_open=low_open)


def check_bool(name: str, value: Any) -> bool:
    """``value`` is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {shown(value)}")
    return value


def check_choice(name: str, value: T, choices: Collection[T]) -> T:
    """``value`` is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(str(choice) for choice in choices)
        raise ConfigError(f"{name}: expected one of {listed}, got {shown(value)}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` is a string (non-empty unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        raise ConfigError(f"{name}: expected a {'' if empty else 'non-empty '}string, got {shown(value)}")
    return value


def shown(value: Any, limit: int = 120) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters: a value pasted from a
    huge YAML list must not turn a one-line error into megabytes."""
    try:
        text = repr(value)
    except RecursionError:  # a self-referencing structure
        return f"<{type(value).__name__}>"
    if len(text) > limit:
        return f"{text[: limit - 30]}... ({len(text)} characters)"
    return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
