"""The ``detect`` stage: Ultralytics YOLO detectors (YOLOv8 / YOLO11 exports).

The model file picks the backend (``.onnx`` ONNX Runtime, ``.xml`` OpenVINO, ``.engine``
TensorRT, ``.pt``/``.torchscript`` PyTorch; see :func:`engine.backends.load_backend`), or
``backend:`` names it (``backend: openvino`` runs an ``.onnx`` file with OpenVINO); a
``triton://HOST:PORT/MODEL`` URI runs the model on a Triton server (see
:mod:`engine.backends.triton`). Class names, input size
and stride come from the metadata Ultralytics writes into its exports (or its checkpoints),
so any detector exported with ``yolo export format=onnx`` works without configuration.

Two paths, one result: frames that are numpy arrays on a ``cpu`` run take the numpy/OpenCV
path (:func:`engine.ops.cpu.letterbox_batch`, NMS with OpenCV); frames that are torch tensors,
or any run on a ``cuda`` device, take the torch path — letterbox with kornia, inference and
``torchvision`` NMS on the frames' device, only the kept boxes come back to the CPU. A
model with a dynamic batch axis gets the whole batch (several sources included) in one
call; a fixed-batch model is run chunk by chunk, transparently.

The stage is ``concurrent``: a pipeline with ``workers: N`` calls it on N batches at once
from N threads (:mod:`engine.run_ahead`), and each call then gets ``cores // N`` inference
threads unless ``threads`` says otherwise. Scratch buffers are per thread for that reason.
ONNX Runtime sessions run from several threads at once; the other backends (a TensorRT
execution context, CUDA graphs) may not, so their model calls take turns under a lock while
pre- and post-processing still overlap.

Defaults follow Ultralytics ``predict`` (``conf=0.25``, ``iou=0.7``, ``max_det=300``, one
class per box, per-class NMS, letterbox padded with grey 114), so detections can be compared
one to one with ``model.predict(...)`` on the same frames. Note that ``model.track(...)``
lowers ``conf`` to 0.1 by default; set ``confidence: 0.1`` to compare with it.

Output: ``frame.layers[layer]`` is a ``supervision.Detections`` with ``xyxy`` (float32
pixels of the frame), ``confidence`` (float32), ``class_id`` (int64) and
``data["class_name"]`` (numpy array of str), sorted by decreasing confidence.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from engine.backends import NAMED_BACKENDS, is_model_uri, load_backend, preload_runtime
from engine.backends.base import InferenceBackend
from engine.checks import check_bool, check_choice, check_int, check_number, check_optional_int
from engine.errors import ConfigError, ModelError
from engine.frame import OBJECTS_LAYER, Batch
from engine.ops.cpu import letterbox_batch
from engine.stage import BaseStage, Context
from plugins.yolo_decode import decode_batch, decode_batch_torch

logger = logging.getLogger(__name__)

_PAD_VALUE = 114  # Ultralytics' letterbox grey


def _parse_names(raw: str) -> list[str]:
    """Turn Ultralytics' ``names`` metadata (a Python dict or list literal) into a list."""
    value = ast.literal_eval(raw)
    if isinstance(value, Mapping):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise ValueError(f"class ids must be 0..{len(keys) - 1}, got {keys[:5]}...")
        return [str(value[key]) for key in keys]
    if isinstance(value, list | tuple):
        return [str(name) for name in value]
    raise ValueError(f"expected a dict or list literal, got {type(value).__name__}")


def _parse_hw(raw: str) -> tuple[int, int]:
    value = ast.literal_eval(raw)
    if isinstance(value, int):
        return value, value
    height, width = (int(side) for side in value)
    return height, width


def _declared_hw(raw: str) -> tuple[int, int] | None:
    """The ``imgsz`` metadata as (height, width), or None when it cannot be read."""
    try:
        return _parse_hw(raw)
    except (ValueError, SyntaxError, TypeError):
        return None


class YoloDetector(BaseStage):
    """Detects objects with an Ultralytics YOLO detector and writes them into a layer.

    Args:
        model: Model file exported by Ultralytics (``.onnx``, ``.engine``, ``.pt``,
            ``.torchscript``), or ``triton[+http]://HOST:PORT/MODEL[/VERSION]`` for a model
            served by Triton.
        confidence: Keep boxes whose best class score is above this (0..1).
        iou: Per-class NMS drops a box whose IoU with a better box is above this (0..1).
        classes: Keep only these class names (as in the model's ``names``); None keeps all.
        max_detections: At most this many detections per frame.
        layer: Name of the detection layer to write.
        agnostic_nms: Suppress overlapping boxes across classes too.
        threads: CPU threads for inference (ONNX Runtime ``intra_op_num_threads``; for
            PyTorch models ``torch.set_num_threads``, which is process-wide); None lets the
            runtime choose (every core), or gives ``cores // workers`` to each call when the
            pipeline runs several at once.
        imgsz: Letterbox size for models whose input size is dynamic (default: the size in
            their metadata); must equal the input size of a fixed-size model.
        half: Run a PyTorch model in float16 (CUDA only; ONNX/TensorRT models carry their
            precision in the file).
        backend: Backend name overriding the model file's default (``onnxruntime``,
            ``openvino``, ``tensorrt``, ``torch``); None picks by suffix.
        backend_options: Extra keyword options for the backend, for example
            ``{cuda_graph: true}`` or ``{compile: true}`` for PyTorch models, or
            ``{precision: f32}`` for OpenVINO.

    Raises:
        ConfigError: An argument is out of range or of the wrong type.
    """

    concurrent = True  # stateless between batches; buffers per thread, backend calls guarded

    def __init__(
        self,
        *,
        model: Path | str,
        confidence: float = 0.25,
        iou: float = 0.7,
        classes: list[str] | None = None,
        max_detections: int = 300,
        layer: str = OBJECTS_LAYER,
        agnostic_nms: bool = False,
        threads: int | None = None,
        imgsz: int | None = None,
        half: bool = False,
        backend: str | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        check_number("confidence", confidence, low=0.0, high=1.0)
        check_number("iou", iou, low=0.0, high=1.0)
        check_int("max_detections", max_detections, low=1)
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"layer must be a non-empty string, got {layer!r}")
        if classes is not None and (
            isinstance(classes, str)
            or not isinstance(classes, Sequence)
            or not classes
            or not all(isinstance(name, str) and name for name in classes)
        ):
            raise ConfigError(f"classes must be a non-empty list of class names or null, got {classes!r}")
        check_optional_int("threads", threads, low=1)
        check_bool("agnostic_nms", agnostic_nms)
        check_optional_int("imgsz", imgsz, low=32)
        check_bool("half", half)
        if backend is not None:
            check_choice("backend", backend, NAMED_BACKENDS)
        preload_runtime(model, backend=backend)  # before any source opens (see there)
        if backend_options is not None and (
            not isinstance(backend_options, Mapping) or not all(isinstance(k, str) for k in backend_options)
        ):
            raise ConfigError(f"backend_options must be a mapping of option names, got {backend_options!r}")
        self.model: Path | str = model if is_model_uri(model) else Path(model)
        self.confidence = float(confidence)
        self.iou = float(iou)
        self.classes = list(classes) if classes is not None else None
        self.max_detections = max_detections
        self.layer = layer
        self.agnostic_nms = agnostic_nms
        self.threads = threads
        self.imgsz = imgsz
        self.half = half
        self.backend_name = backend
        self.backend_options = dict(backend_options or {})

        self._backend: InferenceBackend | None = None
        self._names: np.ndarray = np.empty(0, dtype=str)
        self._allowed: np.ndarray | None = None
        self._input_name = ""
        self._output_name = ""
        self._input_hw = (0, 0)
        self._input_dtype = np.dtype(np.float32)
        self._fixed_batch: int | None = None
        # Preprocessing buffers, one set per thread (the stage may run on several at once).
        self._scratch = threading.local()
        self._backend_turn: AbstractContextManager[Any] = nullcontext()
        self._output_checked = False
        self._torch_device: str | None = None  # set on cuda runs: every batch takes the torch path

    @property
    def _model_label(self) -> str:
        """The model file's name, or the model URI, for messages."""
        return self.model.name if isinstance(self.model, Path) else self.model

    @property
    def names(self) -> list[str]:
        """Class names of the model, by class id (empty before ``open``)."""
        return [str(name) for name in self._names]

    @property
    def backend(self) -> InferenceBackend:
        """The loaded backend (for benchmarks and tools).

        Raises:
            ModelError: The stage is not open.
        """
        if self._backend is None:
            raise ModelError(f"detect stage for {self.model} is not open")
        return self._backend

    @property
    def input_hw(self) -> tuple[int, int]:
        """Model input size (height, width) (zeros before ``open``)."""
        return self._input_hw

    def _not_a_detector(self, reason: str) -> ModelError:
        return ModelError(f"{self.model} is not an Ultralytics YOLO detector: {reason}")

    def open(self, context: Context) -> None:
        """Load the model on ``context.device``, check it is a YOLO detector, warm it up.

        Raises:
            ModelError: The model is missing, unreadable or not a YOLO detector.
            ConfigError: A name in ``classes`` is not one of the model's classes.
        """
        threads = self.threads
        if threads is None and context.workers > 1:
            threads = max(1, len(os.sched_getaffinity(0)) // context.workers)
        options: dict[str, Any] = {"intra_op_num_threads": threads}
        if self.half:
            options["half"] = True
        options.update(self.backend_options)
        backend = load_backend(self.model, device=context.device, backend=self.backend_name, **options)
        self._torch_device = str(backend.device) if backend.device.is_cuda else None
        try:
            self._configure(backend)
            self._warm_up(backend, context.batch_size)
        except BaseException:
            backend.close()
            raise
        self._backend = backend
        self._backend_turn = nullcontext() if backend.thread_safe else threading.Lock()
        logger.info(
            "detect: %s, input %dx%d, %d classes%s, %s batch, on %s, %d call(s) at once with %s",
            self._model_label,
            self._input_hw[1],
            self._input_hw[0],
            len(self._names),
            f" (keeping {', '.join(self.classes)})" if self.classes else "",
            "dynamic" if self._fixed_batch is None else f"fixed {self._fixed_batch}",
            backend.device,
            context.workers,
            "the runtime's default threads" if threads is None else f"{threads} inference thread(s) each",
        )

    def _configure(self, backend: InferenceBackend) -> None:
        metadata = backend.metadata
        inputs, outputs = backend.inputs, backend.outputs
        task = metadata.get("task")
        if task is not None and task != "detect":
            raise self._not_a_detector(f"its metadata says task {task!r}")
        if metadata.get("end2end") == "True":
            raise self._not_a_detector(
                "end-to-end (NMS-free) exports are not supported; export with end2end=False"
            )
        if "names" not in metadata:
            raise self._not_a_detector("its metadata has no 'names' (export it with Ultralytics)")
        try:
            names = _parse_names(metadata["names"])
        except (ValueError, SyntaxError, TypeError) as error:
            raise self._not_a_detector(f"cannot read its 'names' metadata: {error}") from error
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, None):
            shapes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in inputs)
            raise self._not_a_detector(f"expected one image input [N, 3, H, W], got {shapes}")
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            shapes = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in outputs)
            raise self._not_a_detector(f"expected one output [N, 4 + classes, anchors], got {shapes}")
        channels = outputs[0].shape[1]
        if channels is not None and channels != 4 + len(names):
            raise self._not_a_detector(
                f"output {outputs[0].name} {list(outputs[0].shape)} has {channels} channels but "
                f"4 + {len(names)} classes were expected from its names"
            )
        image_input = inputs[0]
        if image_input.dtype not in ("float32", "float16"):
            raise self._not_a_detector(
                f"input {image_input.name} is {image_input.dtype}, expected float32/16"
            )
        height, width = image_input.shape[2], image_input.shape[3]
        if height is None or width is None:
            # A dynamic-size export: letterbox to the size it was exported for, which
            # Ultralytics keeps a multiple of the model's largest stride.
            try:
                height, width = _parse_hw(metadata["imgsz"])
                stride = int(metadata.get("stride", 32))
            except (KeyError, ValueError, SyntaxError, TypeError) as error:
                raise self._not_a_detector(
                    f"its input size is dynamic and its 'imgsz'/'stride' metadata is missing or "
                    f"unreadable ({error!r})"
                ) from error
            if self.imgsz is not None:
                height = width = self.imgsz
            if height % stride or width % stride:
                raise self._not_a_detector(
                    f"its imgsz {height}x{width} is not a multiple of its stride {stride}"
                )
        elif "imgsz" in metadata and _declared_hw(metadata["imgsz"]) not in (None, (height, width)):
            # An edited graph input: the network was built for another size.
            raise self._not_a_detector(
                f"its input is {width}x{height} but its metadata says it was exported at imgsz "
                f"{metadata['imgsz']} (was the input shape edited?)"
            )
        elif self.imgsz is not None and (height, width) != (self.imgsz, self.imgsz):
            raise ConfigError(
                f"imgsz {self.imgsz} does not match {self._model_label}'s fixed input size {width}x{height}"
            )

        allowed = None
        if self.classes is not None:
            unknown = [name for name in self.classes if name not in names]
            if unknown:
                raise ConfigError(
                    f"classes {unknown} are not classes of {self._model_label}; valid: {', '.join(names)}"
                )
            allowed = np.isin(np.asarray(names), self.classes)

        self._names = np.asarray(names, dtype=str)
        self._allowed = allowed
        self._input_name = image_input.name
        self._output_name = outputs[0].name
        self._input_hw = (int(height), int(width))
        self._input_dtype = np.dtype(image_input.dtype)
        self._fixed_batch = image_input.shape[0]
        self._output_checked = channels is not None

    def _warm_up(self, backend: InferenceBackend, batch_size: int) -> None:
        # The first run of each batch size allocates and plans memory (OpenVINO compiles a
        # model per batch size, 0.3 s for YOLO11n here); pay it here, one call per size the
        # pipeline can give (a batch is partial when frames are scarce), not mid-run.
        sizes = [self._fixed_batch] if self._fixed_batch else range(1, max(1, batch_size) + 1)
        for size in sizes:
            blob: Any = np.full((size, 3, *self._input_hw), _PAD_VALUE / 255, self._input_dtype)
            if self._torch_device is not None:
                import torch

                blob = torch.from_numpy(blob).to(self._torch_device)
            self._check_output(backend.run({self._input_name: blob})[self._output_name])

    def _check_output(self, output: np.ndarray) -> None:
        if self._output_checked:
            return
        if output.ndim != 3 or output.shape[1] != 4 + len(self._names):
            raise self._not_a_detector(
                f"output {self._output_name} has shape {list(output.shape)}, expected "
                f"[N, {4 + len(self._names)}, anchors] for {len(self._names)} classes"
            )
        self._output_checked = True

    def _infer(self, backend: InferenceBackend, blob: Any) -> Any:
        if isinstance(blob, np.ndarray) and self._input_dtype != blob.dtype:
            blob = blob.astype(self._input_dtype)
        with self._backend_turn:
            output = backend.run({self._input_name: blob})[self._output_name]
        self._check_output(output)
        return output

    def _preprocess_numpy(self, images: list[Any], rows: int) -> tuple[np.ndarray, list[Any]]:
        buffer = getattr(self._scratch, "numpy", None)
        if buffer is None or buffer.shape[0] < rows or buffer.shape[2:] != self._input_hw:
            buffer = np.empty((rows, 3, *self._input_hw), np.float32)
            self._scratch.numpy = buffer
        _, infos = letterbox_batch(images, self._input_hw, pad_value=_PAD_VALUE, out=buffer)
        return buffer, infos

    def _preprocess_torch(self, images: list[Any], rows: int) -> tuple[Any, list[Any]]:
        import torch

        from engine.ops.gpu import letterbox_batch_torch

        first = images[0]
        device = torch.device(
            self._torch_device or (first.device if isinstance(first, torch.Tensor) else "cpu")
        )
        dtype = torch.float16 if self._input_dtype == np.float16 else torch.float32
        buffer = getattr(self._scratch, "torch", None)
        if buffer is None or buffer.shape[0] < rows or buffer.device != device or buffer.dtype != dtype:
            buffer = torch.empty((rows, 3, *self._input_hw), dtype=dtype, device=device)
            self._scratch.torch = buffer
        _, infos = letterbox_batch_torch(
            images, self._input_hw, device=device, pad_value=_PAD_VALUE, dtype=dtype, out=buffer
        )
        return buffer, infos

    def __call__(self, batch: Batch) -> Batch:
        """Detect objects in every frame and write ``frame.layers[self.layer]``."""
        frames = batch.frames
        if not frames:
            return batch
        if self._backend is None:
            raise ModelError(f"detect stage for {self.model} was called before open()")
        backend = self._backend
        count = len(frames)
        chunk = self._fixed_batch or count
        # A fixed-batch model always gets full chunks: round the buffer up, and let the
        # unused slots of the last chunk hold stale pictures whose outputs are ignored.
        rows = -(-count // chunk) * chunk
        images = [frame.image for frame in frames]
        on_torch = self._torch_device is not None or not all(
            isinstance(image, np.ndarray) for image in images
        )
        buffer, infos = (
            self._preprocess_torch(images, rows) if on_torch else self._preprocess_numpy(images, rows)
        )
        # Chunk outputs are decoded together without being concatenated (no copy).
        outputs = [
            self._infer(backend, buffer[start : start + chunk])[: count - start]
            for start in range(0, count, chunk)
        ]
        decode = decode_batch if isinstance(outputs[0], np.ndarray) else decode_batch_torch
        decoded = decode(
            outputs,
            confidence=self.confidence,
            iou=self.iou,
            max_detections=self.max_detections,
            agnostic=self.agnostic_nms,
            allowed_classes=self._allowed,
        )
        for frame, info, (xyxy, confidence, class_id) in zip(frames, infos, decoded, strict=True):
            frame.layers[self.layer] = sv.Detections(
                xyxy=info.boxes_to_source(xyxy),
                confidence=confidence,
                class_id=class_id,
                data={"class_name": self._names[class_id]},
            )
        return batch

    def close(self) -> None:
        """Release the model."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
