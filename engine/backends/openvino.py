"""OpenVINO backend: ``.xml`` IR files, and ``.onnx`` files read by OpenVINO's ONNX frontend.

OpenVINO's CPU plugin uses what the processor offers: on a CPU with AVX-512 BF16 (or AMX)
it runs in bfloat16 unless told otherwise, and an int8 IR (NNCF's quantize-dequantize
pairs, see ``vistream export --format openvino --int8``) runs on VNNI. Measured on this
project's 2-core Zen 5 machine with YOLO11n at 320: bf16 about 0.65x ONNX Runtime's fp32
latency, int8 a further 1.2-1.4x throughput.

Convention:
    - Numpy arrays in, numpy arrays out, on the CPU (torch CPU tensors are read as numpy).
    - ``precision="auto"`` leaves the choice to OpenVINO (the fastest the CPU supports:
      bf16 where present, else f32); ``"bf16"`` insists on it (error on a CPU without it);
      ``"f32"`` keeps full precision for float layers.
    - Batch: a model with a free batch axis (``vistream export --format openvino`` frees it)
      is compiled once per batch size it is given, each with a static shape: OpenVINO's CPU
      plugin runs YOLO11n int8 5-10 % slower compiled with a dynamic batch (measured here:
      159 against 178 fps at batch 1, 182 against 192 at batch 3).
    - Concurrency: one ``CompiledModel`` with one ``InferRequest`` per calling thread. The
      wait for a request's result releases the GIL, so the pipeline's ``workers`` threads keep that
      many requests in flight on that many CPU streams, exactly what an
      ``AsyncInferQueue`` of the same depth does (measured equal here), without a callback
      hop back into the caller's thread.
    - Metadata: the ONNX file's ``metadata_props`` (OpenVINO keeps them under the IR's
      ``rt_info/framework``), else ``rt_info/model_info``, else Ultralytics'
      ``metadata.yaml`` beside an IR it exported.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import LoadedSpecs, TensorSpec
from engine.checks import check_choice, check_optional_int
from engine.device import Device, parse_device
from engine.errors import ModelError

logger = logging.getLogger(__name__)

#: Accepted ``precision`` values; see the module docstring.
PRECISIONS = ("auto", "bf16", "f32")
#: Accepted ``performance_mode`` values (OpenVINO's PERFORMANCE_HINT), or None for "auto".
PERFORMANCE_MODES = ("latency", "throughput")

# Rt_info sections that may carry the model's metadata, in order of preference.
_METADATA_SECTIONS = ("framework", "model_info")


def import_openvino() -> Any:
    """Import ``openvino`` or fail with one line saying how to install it.

    Raises:
        ModelError: The package is not installed.
    """
    try:
        import openvino
    except ImportError as error:
        raise ModelError(
            "the OpenVINO backend needs the openvino package: pip install 'vistream[openvino]'"
        ) from error
    return openvino


def _one_line(error: Exception) -> str:
    # OpenVINO's messages start with a "Exception from src/..." location line; keep the
    # first line that says something.
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(error).__name__])[0]


def _dtype_name(element_type: Any) -> str:
    return str(np.dtype(element_type.to_dtype()))


def _spec(port: Any) -> TensorSpec:
    shape = tuple(int(dim.get_length()) if dim.is_static else None for dim in port.get_partial_shape())
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=_dtype_name(port.get_element_type()))


def _checked_input(model_name: str, spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` as a C-contiguous array of the input's dtype, or a ModelError on a wrong shape."""
    array = np.ascontiguousarray(value, dtype=spec.dtype)
    expected = spec.shape
    if len(expected) != array.ndim or any(
        dim is not None and dim != got for dim, got in zip(expected, array.shape, strict=False)
    ):
        raise ModelError(
            f"{model_name}: input {spec.name} has shape {list(array.shape)}, "
            f"expected {[dim if dim is not None else '?' for dim in expected]}"
        )
    return array


def _rt_section(model: Any, section: str) -> dict[str, str]:
    if not model.has_rt_info([section]):
        return {}
    value = model.get_rt_info([section])
    entries = value.astype(dict) if hasattr(value, "astype") else value
    if not isinstance(entries, Mapping):
        return {}
    return {
        str(key): (item.astype(str) if hasattr(item, "astype") else str(item))
        for key, item in entries.items()
    }


def _yaml_metadata(model_path: Path) -> dict[str, str]:
    """Ultralytics' ``metadata.yaml`` beside an IR it exported, as strings like ONNX's."""
    path = model_path.parent / "metadata.yaml"
    if model_path.suffix.lower() != ".xml" or not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return {}
    if not isinstance(data, Mapping):
        return {}
    return {str(key): str(value) for key, value in data.items()}


def with_batch(model: Any, batch: int | None) -> Any:
    """A copy of ``model`` (an ``openvino.Model`` with one input) taking batches of ``batch``
    frames (None: any batch).

    Raises:
        RuntimeError: OpenVINO cannot give the model that batch (a shape baked into the graph).
    """
    import openvino as ov

    resized = model.clone()
    shape = ov.PartialShape(resized.inputs[0].get_partial_shape())
    shape[0] = ov.Dimension() if batch is None else ov.Dimension(batch)
    resized.reshape({resized.inputs[0]: shape})
    return resized


def read_metadata(model: Any, model_path: Path) -> dict[str, str]:
    """The model's metadata strings (``names``, ``imgsz``, ``stride``, ``task``...).

    Args:
        model: An ``openvino.Model``.
        model_path: Its file (for a ``metadata.yaml`` beside it).
    """
    for section in _METADATA_SECTIONS:
        found = _rt_section(model, section)
        if "names" in found:
            return found
    return _yaml_metadata(model_path)


class OpenVinoBackend(LoadedSpecs):
    """Runs an OpenVINO IR (``.xml`` + ``.bin``) or an ONNX model with OpenVINO on the CPU.

    Construction only validates arguments; :meth:`load` reads and compiles the model.

    Args:
        model_path: The ``.xml`` or ``.onnx`` file.
        device: ``"cpu"`` (OpenVINO's GPU plugin is for Intel GPUs, not CUDA).
        precision: ``auto``, ``bf16`` or ``f32`` (OpenVINO's INFERENCE_PRECISION_HINT).
        intra_op_num_threads: Threads per inference request (per CPU stream); None lets
            OpenVINO choose. The ``detect`` stage sets it to ``cores // workers``.
        streams: CPU streams (requests that run at once); None: ``cores //
            intra_op_num_threads`` when that is set, else OpenVINO's choice for
            ``performance_mode``.
        performance_mode: ``latency`` or ``throughput`` (OpenVINO's PERFORMANCE_HINT);
            None: ``latency`` unless ``streams``/``intra_op_num_threads`` ask for more.
        cache_dir: Where OpenVINO caches compiled models (faster second start); None: no cache.

    Raises:
        ConfigError: An argument is malformed, or the device is not the CPU.

    Attributes:
        thread_safe: :meth:`run` may be called from several threads at once (one infer
            request per thread).
    """

    thread_safe = True

    def __init__(
        self,
        model_path: Path,
        *,
        device: str | Device = "cpu",
        precision: str = "auto",
        intra_op_num_threads: int | None = None,
        streams: int | None = None,
        performance_mode: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self._model_path = Path(model_path)
        self._device = parse_device(device)
        self._precision = check_choice("precision", precision, PRECISIONS)
        self._threads = check_optional_int("intra_op_num_threads", intra_op_num_threads, low=1)
        self._streams = check_optional_int("streams", streams, low=1)
        if performance_mode is not None:
            check_choice("performance_mode", performance_mode, PERFORMANCE_MODES)
        self._performance_mode = performance_mode
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._compiled: Any = None  # batch 1 (or the model's own fixed shape)
        self._core: Any = None
        self._model: Any = None  # kept to compile other batch sizes when the batch is free
        self._compiled_by_batch: dict[int, Any] = {}
        self._inputs: list[TensorSpec] = []
        self._input_index: dict[str, int] = {}
        self._ov: Any = None
        self._outputs: list[TensorSpec] = []
        self._metadata: dict[str, str] = {}
        self._local = threading.local()
        self._generation = 0  # bumped by close(): requests of an older compile are dropped
        self._load_lock = threading.Lock()
        self._inference_precision = ""

    def __repr__(self) -> str:
        return f"OpenVinoBackend({str(self._model_path)!r}, precision={self._precision!r})"

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO runs float layers in (``bf16``, ``f32``...), after loading."""
        self.load()
        return self._inference_precision

    @property
    def model_path(self) -> Path:
        """The model file."""
        return self._model_path

    def _config(self, ov: Any) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {}
        streams = self._streams
        if streams is None and self._threads is not None:
            streams = max(1, len(os.sched_getaffinity(0)) // self._threads)
        mode = self._performance_mode or ("throughput" if streams and streams > 1 else "latency")
        config[hints.performance_mode] = (
            hints.PerformanceMode.THROUGHPUT if mode == "throughput" else hints.PerformanceMode.LATENCY
        )
        if streams is not None:
            config[props.num_streams] = streams
        if self._threads is not None:
            config[props.inference_num_threads] = self._threads * (streams or 1)
        if self._precision == "f32":
            config[hints.inference_precision] = ov.Type.f32
        elif self._precision == "bf16":
            core_caps = ov.Core().get_property("CPU", props.device.capabilities)
            if "BF16" not in core_caps:
                raise ModelError(
                    f"precision bf16 asked for {self._model_path.name} but this CPU has no bf16 "
                    f"support (capabilities: {', '.join(core_caps)}); use precision auto or f32"
                )
            config[hints.inference_precision] = ov.Type.bf16
        if self._cache_dir is not None:
            config[props.cache_dir] = str(self._cache_dir)
        return config

    def load(self) -> None:
        """Read and compile the model; does nothing when it is already compiled.

        Raises:
            ModelError: The file is missing or not a model OpenVINO can read, the device is
                not the CPU, or the openvino package is missing.
        """
        if self._compiled is not None:
            return
        with self._load_lock:
            if self._compiled is not None:
                return
            self._load()

    def _load(self) -> None:
        if self._device.is_cuda:
            raise ModelError(
                f"the OpenVINO backend runs on the CPU, not {self._device}: use device cpu, or an "
                f".onnx model with ONNX Runtime / a TensorRT engine for CUDA"
            )
        if not self._model_path.is_file():
            raise ModelError(f"model file not found: {self._model_path}")
        if self._model_path.suffix.lower() == ".xml" and not self._model_path.with_suffix(".bin").is_file():
            raise ModelError(
                f"OpenVINO IR {self._model_path} has no weights file "
                f"{self._model_path.with_suffix('.bin').name} beside it"
            )
        ov = import_openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(self._model_path))
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"cannot load {self._model_path} with OpenVINO: {_one_line(error)}") from error
        self._ov, self._core = ov, core
        inputs = [_spec(port) for port in model.inputs]
        free_batch = len(inputs) == 1 and len(inputs[0].shape) > 0 and inputs[0].shape[0] is None
        compiled = self._compile(model, batch=1 if free_batch else None)
        self._model = model if free_batch else None
        self._compiled_by_batch = {1: compiled} if free_batch else {}
        self._inputs = inputs if free_batch else [_spec(port) for port in compiled.inputs]
        self._input_index = {spec.name: index for index, spec in enumerate(self._inputs)}
        self._outputs = [_spec(port) for port in (model if free_batch else compiled).outputs]
        self._metadata = read_metadata(model, self._model_path)
        import openvino.properties.hint as hints

        self._inference_precision = compiled.get_property(hints.inference_precision).to_string()
        self._compiled = compiled
        logger.info(
            "loaded %s with OpenVINO %s on the CPU (%s, %s stream(s), %s thread(s))",
            self._model_path.name,
            ov.__version__.split("-")[0],
            self._inference_precision,
            compiled.get_property("NUM_STREAMS"),
            compiled.get_property("INFERENCE_NUM_THREADS"),
        )

    def _compile(self, model: Any, *, batch: int | None) -> Any:
        """``model`` compiled for the CPU, with its batch fixed at ``batch`` when given."""
        if batch is not None:
            model = with_batch(model, batch)
        try:
            return self._core.compile_model(model, "CPU", self._config(self._ov))
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"OpenVINO cannot compile {self._model_path}: {_one_line(error)}") from error

    def _compiled_for(self, batch: int) -> Any:
        """The compiled model for ``batch`` frames (compiled on first use for a free batch)."""
        if self._model is None:
            return self._compiled
        compiled = self._compiled_by_batch.get(batch)
        if compiled is None:
            with self._load_lock:
                compiled = self._compiled_by_batch.get(batch)
                if compiled is None:
                    logger.debug("compiling %s for batches of %d", self._model_path.name, batch)
                    compiled = self._compile(self._model, batch=batch)
                    self._compiled_by_batch[batch] = compiled
        return compiled

    def _request(self, batch: int) -> Any:
        """This thread's infer request on the current model compiled for ``batch`` frames."""
        local = self._local
        if getattr(local, "generation", -1) != self._generation:
            self.load()
            local.requests = {}
            local.generation = self._generation
        request = local.requests.get(batch)
        if request is None:
            request = local.requests[batch] = self._compiled_for(batch).create_infer_request()
        return request

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference on this thread's infer request.

        Args:
            inputs: Input name -> array matching :attr:`inputs` in shape and dtype.

        Returns:
            Output name -> numpy array (a copy: safe to keep across calls), in model order.

        Raises:
            ModelError: OpenVINO rejected the inputs or failed while running.
        """
        self.load()
        specs = self._inputs
        if len(inputs) != len(specs) or any(name not in self._input_index for name in inputs):
            names = {spec.name for spec in specs}
            unknown = sorted(set(inputs) - names)
            if unknown:
                raise ModelError(
                    f"{self._model_path.name}: unknown input(s) {', '.join(unknown)}; "
                    f"inputs: {', '.join(sorted(names))}"
                )
            missing = sorted(names - set(inputs))
            raise ModelError(f"{self._model_path.name}: input {', '.join(missing)} is missing")
        try:
            arrays = {}
            for name, value in inputs.items():
                index = self._input_index[name]
                arrays[index] = _checked_input(self._model_path.name, specs[index], value)
            request = self._request(batch=arrays[0].shape[0] if self._model is not None else 1)
            for index, array in arrays.items():
                # The caller's buffer is read in place (we wait for the result below): no
                # copy, and none of the per-call dispatch work of ``infer(dict)`` (a third of
                # this call's own CPU time here).
                request.set_input_tensor(index, self._ov.Tensor(array, shared_memory=True))
            # start_async + wait rather than infer: the waiting caller costs less CPU (about
            # 0.06 ms a call on this machine with three calls in flight), the result is the same.
            request.start_async()
            request.wait()
            # Copied out, so the next call on this request cannot overwrite them.
            return {
                spec.name: request.get_output_tensor(index).data.copy()
                for index, spec in enumerate(self._outputs)
            }
        except (RuntimeError, ValueError, TypeError) as error:
            raise ModelError(f"{self._model_path.name}: inference failed: {_one_line(error)}") from error

    def close(self) -> None:
        """Release the compiled model; a later :meth:`load` or :meth:`run` compiles again."""
        with self._load_lock:
            self._compiled = None
            self._model = None
            self._compiled_by_batch = {}
            self._generation += 1
            self._local = threading.local()
