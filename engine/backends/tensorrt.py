"""TensorRT backend (``.engine``/``.plan``), written against the TensorRT >= 10 Python API.

NOT EXECUTED HERE: TensorRT cannot be installed on the machines this project is developed
and tested on (PyPI only has placeholder wheels there, and there is no GPU), so this module
is written from TensorRT's documentation and its tests are marked ``tensorrt`` (skipped
where ``import tensorrt`` fails). The engine-file format helpers below are pure Python and
tested everywhere.

Convention:
    - I/O tensors are bound by name (``set_tensor_address``) to torch CUDA tensors and the
      engine runs on torch's current CUDA stream (``execute_async_v3``): CUDA memory and
      streams come from torch, no other CUDA library is needed, and preprocessed frames
      never leave the GPU. Tensor inputs give tensor outputs (on the GPU); numpy inputs are
      uploaded and give numpy outputs (for tests and tools).
    - Dynamic axes (a dynamic batch) are set per call with ``set_input_shape`` and must lie
      in the engine's optimisation profile 0, reported by :attr:`TensorRTBackend.profiles`.
    - Engine files may start with Ultralytics' metadata header (4-byte little-endian length
      + JSON), which the engine builder writes too; headerless engines (``trtexec``) work
      but carry no ``names``, so the ``detect`` stage rejects them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import LoadedSpecs, TensorSpec
from engine.device import Device, parse_device
from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


#: ``tensorrt.DataType`` member name -> (torch dtype name, numpy dtype name).
_TRT_TYPES = {
    "FLOAT": ("float32", "float32"),
    "HALF": ("float16", "float16"),
    "BF16": ("bfloat16", "float32"),
    "INT8": ("int8", "int8"),
    "INT32": ("int32", "int32"),
    "INT64": ("int64", "int64"),
    "BOOL": ("bool", "bool"),
    "UINT8": ("uint8", "uint8"),
}


def import_tensorrt() -> Any:
    """Import ``tensorrt`` (>= 10), or explain why it cannot be used.

    Raises:
        ModelError: TensorRT is missing or older than 10.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        raise ModelError(
            "TensorRT is not installed: install NVIDIA's 'tensorrt' wheel (>= 10) on a CUDA machine"
        ) from error
    major = int(str(trt.__version__).split(".", 1)[0])
    if major < 10:
        raise ModelError(f"TensorRT >= 10 is required, found {trt.__version__}")
    return trt


def pack_engine(metadata: Mapping[str, Any], engine_bytes: bytes) -> bytes:
    """Prefix serialized engine bytes with a metadata header (Ultralytics' layout)."""
    header = json.dumps(dict(metadata)).encode()
    return len(header).to_bytes(4, byteorder="little", signed=True) + header + bytes(engine_bytes)


def read_engine_file(path: Path) -> tuple[dict[str, str], bytes]:
    """Split an engine file into its metadata (as ONNX-style strings) and engine bytes.

    Raises:
        ModelError: The file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read engine file {path}: {error}") from error
    length = int.from_bytes(data[:4], byteorder="little", signed=True) if len(data) >= 4 else 0
    if 0 < length <= len(data) - 4:
        try:
            raw = json.loads(data[4 : 4 + length])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw = None
        if isinstance(raw, dict):
            return {key: _metadata_string(value) for key, value in raw.items()}, data[4 + length :]
    return {}, data


def _metadata_string(value: Any) -> str:
    """Render a header value the way ONNX metadata carries it (``str`` of a Python value)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) and k.isdigit() for k in value):
        value = {int(k): v for k, v in value.items()}  # JSON made the class ids strings
    return str(value)


class TensorRTBackend(LoadedSpecs):
    """Runs a serialized TensorRT engine on a CUDA device.

    Args:
        model_path: The ``.engine``/``.plan`` file.
        device: ``"cuda"`` or ``"cuda:N"`` (TensorRT has no CPU mode).

    Raises:
        ConfigError: The device is not a CUDA device.
    """

    #: Not safe to call from several threads at once (one execution context / CUDA graph).
    thread_safe = False

    def __init__(self, model_path: Path, *, device: str | Device = "cuda") -> None:
        self._device = parse_device(device)
        if not self._device.is_cuda:
            raise ConfigError(
                f"the TensorRT backend needs a CUDA device ('cuda' or 'cuda:N'), got {device!r}"
            )
        self._model_path = Path(model_path)
        self._index = self._device.index
        self._engine: Any = None
        self._context: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self._metadata: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(self._model_path)!r}, device={str(self.device)!r})"

    @property
    def profiles(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min, opt, max) shapes of optimisation profile 0."""
        self.load()
        return dict(self._profiles)

    def load(self) -> None:
        """Deserialize the engine and create an execution context; idempotent.

        Raises:
            ModelError: TensorRT or CUDA is missing, or the engine does not deserialize
                (built by another TensorRT version or for another GPU).
        """
        if self._engine is not None:
            return
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise ModelError("the TensorRT backend needs a CUDA GPU; torch sees none")
        metadata, engine_bytes = read_engine_file(self._model_path)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self._index):
            engine = runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise ModelError(
                    f"TensorRT {trt.__version__} cannot deserialize {self._model_path} (built with another "
                    "TensorRT version or for another GPU? rebuild it with 'vistream export')"
                )
            context = engine.create_execution_context()
        inputs, outputs, profiles = [], [], {}
        for position in range(engine.num_io_tensors):
            name = engine.get_tensor_name(position)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dtype = _TRT_TYPES.get(engine.get_tensor_dtype(name).name, ("float32", "float32"))[1]
            spec = TensorSpec(name, tuple(d if d >= 0 else None for d in shape), dtype)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                if -1 in shape:
                    low, opt, high = engine.get_tensor_profile_shape(name, 0)
                    profiles[name] = (tuple(low), tuple(opt), tuple(high))
                else:
                    profiles[name] = (shape, shape, shape)
            else:
                outputs.append(spec)
        self._engine, self._context = engine, context
        self._inputs, self._outputs, self._profiles = inputs, outputs, profiles
        self._metadata = metadata
        logger.info("loaded %s with TensorRT %s on %s", self._model_path.name, trt.__version__, self.device)

    def _torch_dtype(self, name: str) -> Any:
        import torch

        return getattr(torch, _TRT_TYPES.get(self._engine.get_tensor_dtype(name).name, ("float32",))[0])

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the engine once on torch's current CUDA stream.

        Args:
            inputs: Input name -> torch CUDA tensor (or numpy array), within the profile.

        Returns:
            Output name -> torch CUDA tensor (numpy arrays when the inputs were numpy), fresh
            for each call (torch's caching allocator makes that cheap), so outputs of
            several calls can be kept at once.

        Raises:
            ModelError: A missing input, a shape outside the profile, or a failed launch.
        """
        import torch

        self.load()
        with torch.cuda.device(self._index):  # TensorRT launches on the current device
            return self._run(inputs)

    def _run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        context = self._context
        device = torch.device(str(self.device))
        expected = {spec.name for spec in self._inputs}
        if set(inputs) != expected:
            raise ModelError(
                f"{self._model_path.name}: expected inputs {sorted(expected)}, got {sorted(inputs)}"
            )
        as_numpy = all(isinstance(value, np.ndarray) for value in inputs.values())
        held = []  # bound memory must stay alive until the stream has run
        for name, value in inputs.items():
            tensor = (
                torch.as_tensor(value).to(device, self._torch_dtype(name), non_blocking=True).contiguous()
            )
            low, _, high = self._profiles[name]
            shape = tuple(tensor.shape)
            if len(shape) != len(low) or any(
                s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)
            ):
                raise ModelError(
                    f"{self._model_path.name}: input {name} of shape {list(shape)} is outside the engine's "
                    f"profile {list(low)}..{list(high)} (rebuild with a larger --batch)"
                )
            if not context.set_input_shape(name, shape):
                raise ModelError(
                    f"{self._model_path.name}: TensorRT refused shape {list(shape)} for input {name}"
                )
            context.set_tensor_address(name, tensor.data_ptr())
            held.append(tensor)
        results = {}
        for spec in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            buffer = torch.empty(shape, dtype=self._torch_dtype(spec.name), device=device)
            context.set_tensor_address(spec.name, buffer.data_ptr())
            results[spec.name] = buffer
        stream = torch.cuda.current_stream(device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{self._model_path.name}: TensorRT failed to enqueue the inference")
        if as_numpy:
            return {name: tensor.float().cpu().numpy() for name, tensor in results.items()}
        return results

    def close(self) -> None:
        """Release the execution context and the engine."""
        self._context = None
        self._engine = None
