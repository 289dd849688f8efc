"""Triton Inference Server backend: the model runs on a (shared) server, vistream sends tensors.

``triton://HOST:PORT/MODEL[/VERSION]`` talks gRPC, ``triton+http://HOST:PORT/MODEL[/VERSION]``
HTTP/REST (see :func:`parse_triton_uri`). Everything the stage needs comes from the server:
input and output names, shapes and datatypes from the model metadata, the maximum batch size from
the model config, and the model's metadata strings (Ultralytics' ``names``, ``imgsz``,
``stride``) from the config's ``parameters`` map. That last choice works with every Triton
backend (``onnxruntime``, ``tensorrt``, ``python``), needs no access to the server's files, and
is one line per key in ``config.pbtxt`` (the README shows it;
:func:`engine.backends.triton_server.write_model_repository` writes it from an ONNX file).

Convention:
    - Inputs are numpy arrays (torch tensors are copied to host memory, or written into CUDA
      shared memory with ``shared_memory: cuda``); outputs are numpy arrays.
    - Shapes: a model with ``max_batch_size > 0`` reports its first axis as None (dynamic);
      a batch larger than ``max_batch_size`` is sent as several requests.
    - Thread safety: tritonclient clients are not thread-safe (the HTTP one is gevent-based),
      so each calling thread gets its own client. Concurrent callers (run-ahead workers,
      several sources) therefore have requests in flight at once, which the server's dynamic
      batcher merges.
    - Failures: every tritonclient or socket error becomes one :class:`ModelError` line; after
      a connection failure the thread's client is dropped and the next call reconnects, so a
      server that goes away mid-run costs the batches the stage's ``on_error`` policy skips.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.backends.base import LoadedSpecs, TensorSpec
from engine.backends.triton_shm import ShmRegions, shapes_and_types
from engine.backends.triton_uri import SCHEMES, TritonTarget, is_triton_uri, parse_triton_uri
from engine.checks import check_choice, check_number, check_optional_int
from engine.device import Device, parse_device
from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["SCHEMES", "TritonBackend", "TritonTarget", "is_triton_uri", "parse_triton_uri"]

_TRITON_TO_NUMPY = {
    "FP32": "float32",
    "FP16": "float16",
    "FP64": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_NUMPY_TO_TRITON = {value: key for key, value in _TRITON_TO_NUMPY.items()}


def _one_line(error: BaseException) -> str:
    message = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    lines = str(message or type(error).__name__).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _status(error: BaseException) -> str:
    status = error.status() if hasattr(error, "status") and callable(error.status) else None
    return str(status or "")


class TritonBackend(LoadedSpecs):
    """Runs a model on a Triton Inference Server through ``tritonclient``.

    Args:
        uri: ``triton://HOST:PORT/MODEL[/VERSION]`` (gRPC) or ``triton+http://...``.
        device: Where the caller's tensors live: ``cpu``, or ``cuda:N`` for CUDA shared
            memory. Where the model runs is the server's business.
        timeout_s: Limit for one request (and for each call while loading).
        shared_memory: ``none`` (tensors travel in the request), ``system`` (POSIX shared
            memory, same host) or ``cuda`` (CUDA IPC, same host and GPU, torch CUDA tensors;
            needs ``cuda-python``).
        intra_op_num_threads: Accepted for parity with local backends (the detect stage passes
            it) and ignored: the server's instance configuration sets its threads.

    Raises:
        ConfigError: The URI or an option is malformed.

    Attributes:
        thread_safe: :meth:`run` may be called from several threads at once (one client each).
    """

    thread_safe = True

    def __init__(
        self,
        uri: str,
        *,
        device: str | Device = "cpu",
        timeout_s: float = 30.0,
        shared_memory: str = "none",
        intra_op_num_threads: int | None = None,
    ) -> None:
        self.target = parse_triton_uri(uri)
        self._device = parse_device(device)
        self.timeout_s = check_number("timeout_s", timeout_s, low=0.0, low_open=True)
        self.shared_memory = check_choice("shared_memory", shared_memory, ("none", "system", "cuda"))
        check_optional_int("intra_op_num_threads", intra_op_num_threads, low=1)
        if self.shared_memory == "cuda" and not self._device.is_cuda:
            raise ConfigError("shared_memory 'cuda' needs a cuda device, got 'cpu'")
        self._local = threading.local()
        self._clients: list[Any] = []  # every thread's client, closed together
        self._all_regions: list[ShmRegions] = []  # every thread's shared-memory regions
        self._lock = threading.Lock()
        self._loaded = False
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._metadata: dict[str, str] = {}
        self._max_batch_size = 0

    def __repr__(self) -> str:
        return f"TritonBackend({str(self.target)!r})"

    @property
    def max_batch_size(self) -> int:
        """The model config's ``max_batch_size`` (0: the model takes its shapes as they are)."""
        self.load()
        return self._max_batch_size

    # -- clients ---------------------------------------------------------------------------

    def _module(self) -> Any:
        try:
            if self.target.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError as error:
            raise ModelError(
                f"{self.target} needs tritonclient (pip install 'vistream[triton]'): {error}"
            ) from error
        return module

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            if self.target.protocol == "grpc":
                client = module.InferenceServerClient(self.target.url)
            else:
                client = module.InferenceServerClient(
                    self.target.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Forget this thread's client after a connection failure (the next call reconnects)."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        regions = getattr(self._local, "regions", None)
        self._local.regions = None  # registrations may have died with the server: make new ones
        if regions is not None:
            with self._lock:
                if regions in self._all_regions:
                    self._all_regions.remove(regions)
            _close_quietly(regions)
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            _close_quietly(client)

    def _error(self, error: BaseException, doing: str) -> ModelError:
        """Turn a client or socket error into one line; drop the client on connection errors."""
        status, text = _status(error), _one_line(error)
        lowered = text.lower()
        if (
            "DEADLINE_EXCEEDED" in status
            or "deadline" in lowered
            or "timed out" in lowered
            or "timeout" in lowered
        ):
            self._drop_client()
            return ModelError(f"{self.target}: {doing} timed out after {self.timeout_s:g} s")
        if (
            "UNAVAILABLE" in status
            or isinstance(error, OSError)
            or "connect" in lowered
            or "unavailable" in lowered
            or "socket closed" in lowered
        ):
            self._drop_client()
            return ModelError(f"{self.target}: Triton server at {self.target.url} is unreachable ({text})")
        return ModelError(f"{self.target}: {doing} failed: {text}")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._client()
        if self.target.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as error:  # tritonclient, grpc, gevent and socket errors alike
            raise self._error(error, method.replace("_", " ")) from error

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Check the server and the model, read the model's specs; idempotent.

        Raises:
            ModelError: The server is unreachable, the model unknown or not ready, or its
                metadata not usable.
        """
        if self._loaded:
            return
        name, version = self.target.model, self.target.version
        if not self._call("is_server_live"):
            raise ModelError(f"{self.target}: Triton server at {self.target.url} is not live")
        if not self._call("is_model_ready", name, version):
            raise ModelError(self._why_not_ready())
        kwargs = {"as_json": True} if self.target.protocol == "grpc" else {}
        metadata = self._call("get_model_metadata", name, version, **kwargs)
        config = self._call("get_model_config", name, version, **kwargs)
        config = config.get("config", config)  # gRPC wraps the config, HTTP does not
        self._max_batch_size = int(config.get("max_batch_size", 0) or 0)
        self._inputs = [self._spec(entry) for entry in metadata.get("inputs", [])]
        self._outputs = [self._spec(entry) for entry in metadata.get("outputs", [])]
        self._metadata = {
            key: str(value.get("string_value", ""))
            for key, value in (config.get("parameters") or {}).items()
            if isinstance(value, Mapping)
        }
        self._loaded = True
        logger.info(
            "using %s: inputs %s, max batch %d, over %s",
            self.target,
            ", ".join(f"{spec.name} {list(spec.shape)} {spec.dtype}" for spec in self._inputs),
            self._max_batch_size,
            self.target.protocol,
        )

    def _why_not_ready(self) -> str:
        name = self.target.model
        kwargs = {"as_json": True} if self.target.protocol == "grpc" else {}
        index = self._call("get_model_repository_index", **kwargs)
        entries = index.get("models", []) if isinstance(index, Mapping) else index
        versions = [entry for entry in entries if entry.get("name") == name]
        if not versions:
            available = ", ".join(sorted({str(entry.get("name")) for entry in entries})) or "none"
            return f"{self.target}: unknown model {name!r} on the server; available: {available}"
        wanted = self.target.version
        if wanted and all(str(entry.get("version", "")) not in ("", wanted) for entry in versions):
            listed = ", ".join(sorted(str(entry.get("version")) for entry in versions))
            return f"{self.target}: model {name!r} has no version {wanted} on the server; versions: {listed}"
        entry = next((e for e in versions if str(e.get("version", "")) == wanted), versions[0])
        state = entry.get("state") or "UNAVAILABLE"
        reason = entry.get("reason") or "not loaded"
        return f"{self.target}: model {name!r} is not ready ({state}: {reason})"

    def _spec(self, entry: Mapping[str, Any]) -> TensorSpec:
        datatype = str(entry["datatype"])
        if datatype not in _TRITON_TO_NUMPY:
            raise ModelError(f"{self.target}: tensor {entry['name']} has unsupported datatype {datatype}")
        shape = tuple(None if int(dim) < 0 else int(dim) for dim in entry["shape"])
        return TensorSpec(name=str(entry["name"]), shape=shape, dtype=_TRITON_TO_NUMPY[datatype])

    # -- inference -------------------------------------------------------------------------

    def _check(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        spec = next((spec for spec in self._inputs if spec.name == name), None)
        if spec is None:
            valid = ", ".join(spec.name for spec in self._inputs)
            raise ModelError(f"{self.target}: unknown input {name!r}; the model's inputs: {valid}")
        expected = f"{spec.dtype} {['N' if dim is None else dim for dim in spec.shape]}"
        fits = len(shape) == len(spec.shape) and all(
            want is None or want == got for want, got in zip(spec.shape, shape, strict=True)
        )
        if dtype != spec.dtype or not fits:
            raise ModelError(f"{self.target}: input {name} is {dtype} {list(shape)}, expected {expected}")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference on the server.

        Args:
            inputs: Input name -> numpy array (or torch tensor), matching :attr:`inputs`.

        Returns:
            Output name -> numpy array, in model order.

        Raises:
            ModelError: A shape/type mismatch, a timeout, an unreachable server, or a server-side
                error.
        """
        self.load()
        missing = [spec.name for spec in self._inputs if spec.name not in inputs]
        if missing:
            raise ModelError(f"{self.target}: missing input(s) {', '.join(missing)}")
        values = (
            dict(inputs) if self.shared_memory == "cuda" else {k: _to_numpy(v) for k, v in inputs.items()}
        )
        described = shapes_and_types(values)
        for name, (shape, dtype) in described.items():
            self._check(name, shape, dtype)
        rows = next(iter(described.values()))[0][0] if self._max_batch_size > 0 else 0
        if rows <= self._max_batch_size:
            return self._infer(values, described)
        step = self._max_batch_size
        parts = []
        for start in range(0, rows, step):
            chunk = {name: value[start : start + step] for name, value in values.items()}
            parts.append(self._infer(chunk, shapes_and_types(chunk)))
        return {spec.name: np.concatenate([part[spec.name] for part in parts]) for spec in self._outputs}

    def _regions(self) -> ShmRegions:
        regions = getattr(self._local, "regions", None)
        if regions is None:
            regions = ShmRegions(
                self.shared_memory,
                self._client(),
                f"vistream-{id(self):x}",
                device_id=self._device.index or 0,
            )
            self._local.regions = regions
            with self._lock:
                self._all_regions.append(regions)
        return regions

    def _infer(
        self, values: Mapping[str, Any], described: Mapping[str, tuple[tuple[int, ...], str]]
    ) -> dict[str, Any]:
        module = self._module()
        try:
            requests = []
            for name, value in values.items():
                shape, dtype = described[name]
                request = module.InferInput(name, list(shape), _NUMPY_TO_TRITON[dtype])
                if self.shared_memory == "system":
                    self._regions().attach(request, name, np.ascontiguousarray(value))
                elif self.shared_memory == "cuda":
                    self._regions().attach(request, name, _to_cuda(value, self._device))
                elif self.target.protocol == "http":
                    request.set_data_from_numpy(np.ascontiguousarray(value), binary_data=True)
                else:
                    request.set_data_from_numpy(np.ascontiguousarray(value))
                requests.append(request)
        except ModelError:
            raise
        except Exception as error:  # registering a region talks to the server too
            raise self._error(error, "shared memory registration") from error
        outputs = [module.InferRequestedOutput(spec.name) for spec in self._outputs]
        result = self._call(
            "infer", self.target.model, requests, model_version=self.target.version, outputs=outputs
        )
        return {spec.name: result.as_numpy(spec.name) for spec in self._outputs}

    def statistics(self) -> dict[str, Any]:
        """The server's inference statistics for this model (Triton's statistics endpoint).

        Returns:
            The model's entry of ``model_stats``: ``inference_count`` (rows), ``execution_count``
            (model executions), ``batch_stats`` (one entry per executed batch size), ...
        """
        kwargs = {"as_json": True} if self.target.protocol == "grpc" else {}
        answer = self._call("get_inference_statistics", self.target.model, self.target.version, **kwargs)
        stats = answer.get("model_stats", [])
        return dict(stats[0]) if stats else {}

    def close(self) -> None:
        """Close every thread's client; a later :meth:`run` connects again."""
        with self._lock:
            clients, self._clients = self._clients, []
            regions_list, self._all_regions = self._all_regions, []
        for regions in regions_list:
            _close_quietly(regions)
        for client in clients:
            _close_quietly(client)
        self._local = threading.local()
        self._loaded = False


def _to_numpy(value: Any) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def _to_cuda(value: Any, device: Device) -> Any:
    import torch

    return torch.as_tensor(value).to(str(device)).contiguous()


def _close_quietly(closeable: Any) -> None:
    try:
        closeable.close()
    except Exception as error:  # an HTTP client closed from another thread than its own (gevent)
        logger.debug("closing %r: %s", closeable, error)
