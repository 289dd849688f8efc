"""ONNX Runtime backend: CPU by default, the CUDA execution provider on ``cuda`` devices.

Convention:
    - Numpy inputs give numpy outputs on the CPU (ONNX Runtime copies to and from the GPU
      itself when the CUDA execution provider runs the model).
    - Torch tensor inputs give torch tensor outputs on the backend's device, through IO
      binding and DLPack: on ``cuda`` a GPU tensor is read where it lies and the outputs
      stay on the GPU (no trip through host memory); on the CPU nothing is copied either.
    - Dynamic or symbolic dimensions are reported as None in :class:`TensorSpec` shapes.
    - Element types are numpy dtype names: ``tensor(float)`` becomes ``"float32"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from engine.backends.base import LoadedSpecs, TensorSpec
from engine.backends.model_check import check_onnx_file
from engine.checks import check_optional_int
from engine.device import Device, parse_device
from engine.errors import ModelError

logger = logging.getLogger(__name__)

# ONNX Runtime raises its own exception classes (derived straight from Exception, one per
# status code); collect them all so a broken model becomes one ModelError line.
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    value for value in vars(_ort_state).values() if isinstance(value, type) and issubclass(value, Exception)
)

# ONNX element type names whose numpy name differs; the rest ("int64", "uint8", "bool"...)
# are the same in both.
_ORT_TO_NUMPY = {"float": "float32", "double": "float64", "string": "str"}


# Recent ONNX Runtime releases wrap DLPack tensors without a copy (1.32 does).
_DLPACK_IN = hasattr(ort.OrtValue, "from_dlpack")


def _is_torch_tensor(value: Any) -> bool:
    # Checked by type name so a CPU-only install never imports torch here.
    return type(value).__module__.startswith("torch") and hasattr(value, "data_ptr")


def _dtype_name(ort_type: str) -> str:
    """Turn ``"tensor(float)"`` into ``"float32"``."""
    inner = ort_type[len("tensor(") : -1] if ort_type.startswith("tensor(") else ort_type
    return _ORT_TO_NUMPY.get(inner, inner)


def _spec(node: Any) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in node.shape)
    return TensorSpec(name=node.name, shape=shape, dtype=_dtype_name(node.type))


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class OnnxRuntimeBackend(LoadedSpecs):
    """Runs an ONNX model with ONNX Runtime.

    Construction only validates arguments; :meth:`load` creates the session (and every
    property loads it on first use). ``metadata`` is the model's ``metadata_props``.

    Args:
        model_path: The ``.onnx`` file.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. CUDA needs the CUDA execution provider
            (the ``onnxruntime-gpu`` package).
        intra_op_num_threads: Threads used inside one operator; None lets ONNX Runtime pick
            (one per physical core).
        inter_op_num_threads: Threads used across independent operators; None lets ONNX
            Runtime pick.

    Raises:
        ConfigError: The device or a thread count is malformed.

    Attributes:
        thread_safe: :meth:`run` may be called from several threads at once (ONNX Runtime
            documents ``InferenceSession.run`` as thread-safe).
    """

    thread_safe = True

    def __init__(
        self,
        model_path: Path,
        *,
        device: str | Device = "cpu",
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
    ) -> None:
        self._model_path = Path(model_path)
        self._device = parse_device(device)
        self._intra_op_num_threads = check_optional_int("intra_op_num_threads", intra_op_num_threads, low=1)
        self._inter_op_num_threads = check_optional_int("inter_op_num_threads", inter_op_num_threads, low=1)
        self._session: ort.InferenceSession | None = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._output_names: list[str] = []
        self._metadata: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self._model_path)!r}, device={str(self.device)!r})"

    @property
    def model_path(self) -> Path:
        """The model file."""
        return self._model_path

    def _providers(self) -> list[Any]:
        if not self._device.is_cuda:
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"device {str(self.device)!r} needs ONNX Runtime's CUDAExecutionProvider "
                f"(package onnxruntime-gpu); available providers: {', '.join(available)}"
            )
        return [("CUDAExecutionProvider", {"device_id": self._device.index}), "CPUExecutionProvider"]

    def load(self) -> None:
        """Create the inference session; does nothing when it already exists.

        Raises:
            ModelError: The file is missing or not a valid ONNX model, or the requested
                device's execution provider is not available.
        """
        if self._session is not None:
            return
        if not self._model_path.is_file():
            raise ModelError(f"model file not found: {self._model_path}")
        check_onnx_file(self._model_path)  # a damaged file is an error here, not in C++
        providers = self._providers()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's own warnings go to stderr, bypassing logging; keep errors only.
        options.log_severity_level = 3
        if self._intra_op_num_threads is not None:
            options.intra_op_num_threads = self._intra_op_num_threads
        if self._inter_op_num_threads is not None:
            options.inter_op_num_threads = self._inter_op_num_threads
        try:
            session = ort.InferenceSession(str(self._model_path), options, providers=providers)
        except _ORT_ERRORS as error:
            raise ModelError(
                f"cannot load {self._model_path} as an ONNX model: {_one_line(error)}"
            ) from error
        if self._device.is_cuda and "CUDAExecutionProvider" not in session.get_providers():
            # ORT silently falls back to the CPU when the CUDA libraries fail to load.
            raise ModelError(
                f"ONNX Runtime could not start the CUDA execution provider for {self._model_path} "
                f"(CUDA/cuDNN libraries missing?); session providers: {', '.join(session.get_providers())}"
            )
        self._inputs = [_spec(node) for node in session.get_inputs()]
        self._outputs = [_spec(node) for node in session.get_outputs()]
        self._output_names = [spec.name for spec in self._outputs]
        self._metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._session = session
        logger.info(
            "loaded %s with ONNX Runtime %s on %s (%s)",
            self._model_path.name,
            ort.__version__,
            self.device,
            ", ".join(session.get_providers()),
        )

    def _loaded_session(self) -> ort.InferenceSession:
        self.load()
        session = self._session
        if session is None:  # pragma: no cover - load() either sets it or raises
            raise ModelError(f"{self._model_path} is not loaded")
        return session

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference.

        Args:
            inputs: Input name -> numpy array or torch tensor, matching :attr:`inputs` in
                shape and dtype.

        Returns:
            Output name -> numpy array (numpy inputs) or torch tensor on :attr:`device`
            (tensor inputs), in model order.

        Raises:
            ModelError: ONNX Runtime rejected the inputs or failed while running.
        """
        session = self._loaded_session()
        if any(_is_torch_tensor(value) for value in inputs.values()):
            return self._run_torch(session, inputs)
        feeds = {name: np.asarray(value) for name, value in inputs.items()}
        try:
            results = session.run(self._output_names, feeds)
        except _ORT_ERRORS as error:
            raise ModelError(f"{self._model_path.name}: inference failed: {_one_line(error)}") from error
        return dict(zip(self._output_names, results, strict=True))

    def _run_torch(self, session: ort.InferenceSession, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run on torch tensors with IO binding; outputs are torch tensors on our device."""
        import torch

        device = torch.device(str(self.device))
        device_type, device_id = device.type, device.index or 0
        binding = session.io_binding()
        held = []  # the bound memory must outlive run_with_iobinding
        for name, value in inputs.items():
            tensor = torch.as_tensor(value).to(device).contiguous()
            held.append(tensor)
            if _DLPACK_IN:
                binding.bind_ortvalue_input(name, ort.OrtValue.from_dlpack(tensor))
            else:  # older ONNX Runtime: bind the raw pointer
                binding.bind_input(
                    name,
                    device_type,
                    device_id,
                    torch.empty(0, dtype=tensor.dtype).numpy().dtype.type,
                    tuple(tensor.shape),
                    tensor.data_ptr(),
                )
        for name in self._output_names:
            binding.bind_output(name, device_type, device_id)
        if device_type == "cuda":
            # The CUDA execution provider runs on its own stream: let torch's pending work
            # (the preprocessing that wrote the inputs) finish first.
            torch.cuda.current_stream(device).synchronize()
        try:
            session.run_with_iobinding(binding)
        except _ORT_ERRORS as error:
            raise ModelError(f"{self._model_path.name}: inference failed: {_one_line(error)}") from error
        results = {}
        for name, value in zip(self._output_names, binding.get_outputs(), strict=True):
            if hasattr(value, "__dlpack__"):
                results[name] = torch.from_dlpack(value)  # zero-copy, on the device
            else:  # older ONNX Runtime: one copy through host memory
                results[name] = torch.from_numpy(value.numpy()).to(device)
        return results

    def close(self) -> None:
        """Release the session; a later call to :meth:`load` or :meth:`run` reloads it."""
        self._session = None
