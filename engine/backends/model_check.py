"""Checks on model files before a native runtime parses them.

A native runtime is the wrong place to find out that a file is damaged: its parser runs in
C++, and how its exception travels depends on the process (see
:func:`engine.sources.gst.prefer_gnu_unwinder` for one way it was lost). So the file's
structure is checked here first, in Python, and a damaged file is one
:class:`~engine.errors.ModelError` line naming what is wrong.

An ONNX file is a protobuf ``ModelProto``. Walking its top-level fields (a handful: ir
version, opsets, producer, the graph as one length-delimited field, metadata) reads only a few
bytes of headers and catches a truncated file (the graph's declared length runs past the end
of the file), random bytes (invalid tags or wire types) and a file that holds no graph. The
``onnx`` package is not needed (it is not part of the base install), and nothing beyond the
headers is decoded, so the check costs microseconds.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_GRAPH_FIELD = 7  # ModelProto.graph
_IR_VERSION_FIELD = 1


def _varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """Decode a protobuf varint at ``position``; returns (value, next position)."""
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("a number runs past the end of the file")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("a number is longer than 10 bytes")


def check_onnx_file(path: Path) -> None:
    """Check that ``path`` is structurally an ONNX model before a runtime loads it.

    Raises:
        ModelError: The file is missing, empty, truncated, not a protobuf ``ModelProto``, or
            has no graph; the message names the file and the problem.
    """
    try:
        data = memoryview(path.read_bytes())
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror}") from error
    if not len(data):
        raise ModelError(f"model file {path} is empty")
    fields: set[int] = set()
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("a field number 0")
            if wire == _VARINT:
                _, position = _varint(data, position)
            elif wire == _I64:
                position += 8
            elif wire == _I32:
                position += 4
            elif wire == _LEN:
                length, position = _varint(data, position)
                position += length
            else:
                raise ValueError(f"wire type {wire}")
            if position > len(data):
                raise ValueError(
                    f"field {number} runs {position - len(data)} bytes past the end (truncated?)"
                )
            fields.add(number)
    except ValueError as error:
        raise ModelError(f"{path} is not a valid ONNX model: {error}") from None
    if _GRAPH_FIELD not in fields or _IR_VERSION_FIELD not in fields:
        raise ModelError(f"{path} is not a valid ONNX model: it has no graph or no IR version")
