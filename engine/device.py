"""Where models and tensors live: one parsed, frozen :class:`Device` for the whole engine.

Every ``device`` setting — a pipeline's ``device:``, ``--device`` on any command, a backend's
``device`` argument — goes through :func:`parse_device`, so ``cpu``, ``cuda`` and ``cuda:1``
mean the same everywhere and anything else fails with the same message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from engine.errors import ConfigError

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """A compute device.

    Attributes:
        kind: ``"cpu"`` or ``"cuda"``.
        index: The CUDA device number (0 for ``cuda``); always 0 for the CPU.
    """

    kind: Literal["cpu", "cuda"] = "cpu"
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        """True for a CUDA GPU."""
        return self.kind == "cuda"

    def __str__(self) -> str:
        """``cpu`` or ``cuda:N``: the spelling torch and ONNX Runtime accept."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


#: The CPU, the default device.
CPU = Device()


def parse_device(value: str | Device) -> Device:
    """Parse ``cpu``, ``cuda`` or ``cuda:N`` (a :class:`Device` is returned as it is).

    Raises:
        ConfigError: Anything else, naming the value.
    """
    if isinstance(value, Device):
        return value
    match = _DEVICE.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    kind = match.group(1)
    return Device("cuda", int(match.group(2) or 0)) if kind == "cuda" else CPU
