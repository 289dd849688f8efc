"""The inference backend contract: named arrays in, named arrays out.

Backends know nothing about models' meaning: YOLO decoding, NMS, softmax and the like
live in the plugins. A backend is chosen by the model file's type (see
:func:`engine.backends.load_backend`).

Convention:
    - Inputs and outputs are numpy arrays on the CPU, or torch tensors on the backend's
      device when the backend runs on a GPU (so preprocessed frames never leave it).
    - ``shape`` entries of a :class:`TensorSpec` are ints, or None for a dynamic axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from engine.device import Device


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type of one model input or output.

    Attributes:
        name: Tensor name in the model.
        shape: Dimensions; None marks a dynamic axis (such as a dynamic batch).
        dtype: numpy dtype name, such as ``"float32"`` or ``"float16"``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def dynamic_batch(self) -> bool:
        """True when the first axis accepts any batch size."""
        return len(self.shape) > 0 and self.shape[0] is None


class InferenceBackend(Protocol):
    """Runs one model. Construct cheaply, ``load`` does the heavy work.

    Attributes:
        thread_safe: True when ``run`` may be called from several threads at once (ONNX
            Runtime sessions); otherwise callers take turns (a TensorRT execution context,
            CUDA graphs), as ``detect`` does under pipeline ``workers``.
    """

    thread_safe: bool

    @property
    def device(self) -> Device:
        """Where the model runs."""

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input tensor specs, in model order."""

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output tensor specs, in model order."""

    @property
    def metadata(self) -> Mapping[str, str]:
        """Model metadata strings (ONNX metadata_props, or the equivalent)."""

    def load(self) -> None:
        """Do the heavy work (read the model, create the session or engine); idempotent."""

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference on named inputs and return named outputs."""

    def close(self) -> None:
        """Release the model."""


class LoadedSpecs:
    """The read-only properties of :class:`InferenceBackend` for a backend whose ``load``
    fills ``_inputs``, ``_outputs`` and ``_metadata`` (and whose constructor sets
    ``_device``): each reading loads the model first and returns a copy.

    A backend whose specs are not read from the model (``TorchBackend``) overrides
    ``inputs`` and ``outputs``.
    """

    _device: Device
    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]
    _metadata: dict[str, str]

    def load(self) -> None:
        """Read the model (each backend's own)."""
        raise NotImplementedError

    @property
    def device(self) -> Device:
        """Where the model runs (or, for a server, where the caller's tensors live)."""
        return self._device

    @property
    def inputs(self) -> list[TensorSpec]:
        """Input tensor specs, in model order (None for a dynamic axis)."""
        self.load()
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        """Output tensor specs, in model order (None for a dynamic axis)."""
        self.load()
        return list(self._outputs)

    @property
    def metadata(self) -> Mapping[str, str]:
        """Model metadata strings (``names``, ``imgsz``, ``stride``...; where each backend
        reads them is in its class docstring)."""
        self.load()
        return dict(self._metadata)
