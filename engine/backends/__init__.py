"""Inference backends, chosen by the model file's type (or by name, or a ``triton://`` URI).

``load_backend("yolo.onnx", device="cpu")`` returns a loaded :class:`InferenceBackend`;
``load_backend("triton://127.0.0.1:8001/yolo11n")`` one whose model runs on a Triton server.
Each suffix maps to a ``"module:Class"`` path that is imported only when a model of that
type is loaded, so a machine without TensorRT or torch can still run ONNX models. Adding a
backend is one line in :data:`BACKENDS` (and one in :data:`NAMED_BACKENDS` when it can also
read a file type that another backend owns, as OpenVINO reads ``.onnx``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from pathlib import Path
from typing import Any

from engine.backends.base import InferenceBackend, TensorSpec
from engine.device import Device
from engine.errors import ConfigError, ModelError
from engine.locations import describe_lookup

__all__ = [
    "BACKENDS",
    "NAMED_BACKENDS",
    "InferenceBackend",
    "TensorSpec",
    "is_model_uri",
    "load_backend",
    "preload_runtime",
]

#: Model file suffix -> (backend name for messages, ``"module:Class"`` or None while the
#: backend is not written yet).
BACKENDS: dict[str, tuple[str, str | None]] = {
    ".onnx": ("ONNX Runtime", "engine.backends.onnxruntime:OnnxRuntimeBackend"),
    ".engine": ("TensorRT", "engine.backends.tensorrt:TensorRTBackend"),
    ".plan": ("TensorRT", "engine.backends.tensorrt:TensorRTBackend"),
    ".pt": ("PyTorch", "engine.backends.torch:TorchBackend"),
    ".torchscript": ("PyTorch", "engine.backends.torch:TorchBackend"),
    ".xml": ("OpenVINO", "engine.backends.openvino:OpenVinoBackend"),
}

#: ``backend:`` name -> (name for messages, ``"module:Class"``, suffixes it reads).
NAMED_BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "onnxruntime": ("ONNX Runtime", "engine.backends.onnxruntime:OnnxRuntimeBackend", (".onnx",)),
    "openvino": ("OpenVINO", "engine.backends.openvino:OpenVinoBackend", (".xml", ".onnx")),
    "tensorrt": ("TensorRT", "engine.backends.tensorrt:TensorRTBackend", (".engine", ".plan")),
    "torch": ("PyTorch", "engine.backends.torch:TorchBackend", (".pt", ".torchscript")),
}


#: The backend for models given as a URI (see :mod:`engine.backends.triton`).
TRITON_BACKEND = ("Triton", "engine.backends.triton:TritonBackend")


def is_model_uri(model: str | Path) -> bool:
    """True when ``model`` names a served model (``triton://...``) rather than a file."""
    from engine.backends.triton_uri import is_triton_uri

    return is_triton_uri(model)


def _resolve(path: Path, backend: str | None) -> tuple[str, str | None]:
    """(name for messages, ``"module:Class"``) of the backend for ``path``."""
    suffix = path.suffix.lower()
    name, target = BACKENDS.get(suffix, ("", None))
    if backend is not None:
        if backend not in NAMED_BACKENDS:
            raise ConfigError(f"backend: expected one of {', '.join(NAMED_BACKENDS)}, got {backend!r}")
        name, target, suffixes = NAMED_BACKENDS[backend]
        if suffix not in suffixes:
            raise ConfigError(
                f"the {name} backend does not read {suffix} files ({path.name}); "
                f"it reads {', '.join(suffixes)}"
            )
    return name, target


def preload_runtime(model_path: str | Path, *, backend: str | None = None) -> None:
    """Load the native runtime a model will need, before sources open (cheap: an import).

    OpenVINO must be in the process before GStreamer: once GStreamer's plugins have loaded
    their libraries, OpenVINO's first ``compile_model`` aborts the process (``dlSym cannot
    locate method 'create_extensions'``, OpenVINO 2026.4 with Debian's GStreamer 1.22). A
    stage calls this from its constructor, which runs before the pipeline opens its sources.
    Missing packages are left for :func:`load_backend` to report.

    Raises:
        ConfigError: ``backend`` is unknown or does not read this file type.
    """
    if is_model_uri(model_path):
        return
    name, _ = _resolve(Path(model_path), backend)
    if name == "OpenVINO":
        with contextlib.suppress(ImportError):
            import openvino  # noqa: F401


def load_backend(
    model_path: str | Path, *, device: str | Device = "cpu", backend: str | None = None, **options: Any
) -> InferenceBackend:
    """Build the backend for a model file from its suffix (or ``backend``, or a model URI) and load it.

    Args:
        model_path: The model file: ``.onnx`` (ONNX Runtime), ``.xml`` (OpenVINO IR),
            ``.engine``/``.plan`` (TensorRT, CUDA only), ``.pt``/``.torchscript`` (PyTorch); or a
            Triton URI, ``triton://HOST:PORT/MODEL[/VERSION]`` (gRPC) or ``triton+http://...``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: A name from :data:`NAMED_BACKENDS` to override the suffix's default, for
            example ``"openvino"`` for an ``.onnx`` file; None picks by suffix.
        **options: Backend-specific keyword options, for example ``intra_op_num_threads``
            for ONNX Runtime or ``half``/``cuda_graph``/``compile`` for PyTorch. Options set
            to None are left at the backend's default.

    Returns:
        A backend whose model is loaded and ready to ``run``.

    Raises:
        ModelError: The file is missing, its type is not supported, or it cannot be loaded
            (for a URI: the server is unreachable or the model unknown or not ready).
        ConfigError: An option is not accepted by the backend, the URI or the device is
            malformed.
    """
    if is_model_uri(model_path):
        if backend is not None:
            raise ConfigError(f"backend: {backend!r} cannot serve a model URI ({model_path})")
        return _build(TRITON_BACKEND, str(model_path), device, options)
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path} ({describe_lookup('models')})")
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        supported = ", ".join(sorted(BACKENDS))
        raise ModelError(
            f"unsupported model file type {suffix or '(no suffix)'!r} for {path}; supported: {supported}"
        )
    name, target = _resolve(path, backend)
    if target is None:
        raise ModelError(f"the {name} backend for {suffix} is not available yet: {path}")
    return _build((name, target), path, device, options)


def _build(
    backend: tuple[str, str], model: str | Path, device: str | Device, options: dict[str, Any]
) -> InferenceBackend:
    name, target = backend
    module_name, class_name = target.split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)

    kwargs = {key: value for key, value in options.items() if value is not None}
    accepted = inspect.signature(backend_class).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p not in ("model_path", "device"))
        raise ConfigError(
            f"the {name} backend does not accept option(s) {', '.join(unknown)}; valid: {valid}"
        )
    loaded = backend_class(model, device=device, **kwargs)
    loaded.load()
    return loaded  # type: ignore[no-any-return]
