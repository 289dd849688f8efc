"""Argument checks, one line per argument, in the spirit of kornia's ``KORNIA_CHECK``.

Each check raises :class:`engine.errors.ConfigError` with a message that names the argument,
what was expected and the value given, and returns the value (converted where that is the
point: :func:`check_number` returns a ``float``), so a constructor reads::

    self.confidence = check_number("confidence", confidence, low=0.0, high=1.0)
    self.max_detections = check_int("max_detections", max_detections, low=1)

Booleans are never taken for numbers (``True`` is an ``int`` in Python, never in a config),
and NaN and infinities are never in range.

:func:`read_yaml` is the one way a YAML config (pipeline, calibration) is parsed: the safe
loader, bounded in size and alias expansion, duplicate keys refused. It lives here, beside the
other input checks, because both the config and the calibration loaders need it and neither
may import the other.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, TypeVar

import yaml

from engine.errors import ConfigError, EngineError

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


# -- YAML configs ----------------------------------------------------------------------------

#: Largest YAML file (pipeline or calibration) read, in bytes: a config, not a data set.
MAX_YAML_BYTES = 1 << 20
#: Most values a YAML document may hold once its aliases are expanded (an alias bomb's
#: nine nested lists hold 10^9).
MAX_YAML_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate mapping keys refused (PyYAML keeps the last
    silently: a second ``stages:`` would drop the first list without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise ConfigError(
                    f"duplicate key {_clip_text(key)!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {first.start_mark.line + 1})"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class _AliasBomb(Exception):
    """Internal: the document expands past :data:`MAX_YAML_VALUES`."""


def _expanded_values(node: yaml.Node, limit: int) -> int:
    """How many values ``node`` holds with every alias expanded, counting up to ``limit``."""
    counts: dict[int, int] = {}

    def count(current: yaml.Node) -> int:
        known = counts.get(id(current))
        if known is not None:
            return known
        total = 1
        if isinstance(current, yaml.SequenceNode):
            children: list[yaml.Node] = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        else:
            children = []
        for child in children:
            total += count(child)
            if total > limit:
                break
        counts[id(current)] = total
        return total

    return count(node)


def read_yaml(text: str, where: str, *, error: type[EngineError] = ConfigError) -> Any:
    """Parse a YAML config safely: bounded size and alias expansion, no duplicate keys.

    Args:
        text: The document.
        where: The file, for messages.
        error: The class of the error raised (``CalibrationError`` for calibrations).

    Raises:
        EngineError: Of class ``error``, one line: too large, an alias bomb, a duplicate key,
            a Python tag, or malformed YAML (with line and column).
    """
    if len(text) > MAX_YAML_BYTES:
        raise error(f"{where}: {len(text)} bytes is too large for a config (at most {MAX_YAML_BYTES})")
    loader = None
    try:
        loader = _StrictLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()  # type: ignore[no-untyped-call]
        if node is None:
            return None
        if _expanded_values(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise _AliasBomb
        return loader.construct_document(node)  # type: ignore[no-untyped-call]
    except _AliasBomb:
        raise error(
            f"{where}: the YAML expands to more than {MAX_YAML_VALUES} values through its "
            "aliases (an alias bomb?)"
        ) from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{where}: malformed YAML{at}: {_clip_text(detail)}") from None
    except ConfigError as problem:
        raise error(f"{where}: {problem}") from None
    except RecursionError:
        raise error(f"{where}: the YAML is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]


def _clip_text(value: Any, limit: int = 120) -> str:
    """``repr``-free short text of a value for messages (a huge value stays one short line)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"
