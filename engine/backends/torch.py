"""PyTorch backend: Ultralytics ``.pt`` checkpoints and TorchScript files, CPU or CUDA.

Convention:
    - ``run`` takes numpy arrays or torch tensors; numpy in gives numpy out (the CPU
      pipeline), a tensor in gives tensors out on the backend's device (the GPU pipeline:
      preprocessed frames never leave the device).
    - The model has one image input ``images`` [N, 3, H, W] (N, H, W dynamic) and one output
      ``output0`` [N, 4 + nc, anchors], as Ultralytics' ONNX exports name them, and reports
      the same metadata keys (``names``, ``imgsz``, ``stride``, ``task``) so the ``detect``
      stage treats every backend alike.
    - ``half`` runs the model in float16 (CUDA only); inputs are cast to the model's dtype.

Options: ``cuda_graph`` replays one captured CUDA graph per input shape (saves the kernel
launch cost at small batches); ``compile`` wraps the model in ``torch.compile``. Both are
off by default: capture and compilation take seconds and memory at start-up.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import LoadedSpecs, TensorSpec
from engine.backends.ultralytics_env import import_ultralytics
from engine.checks import check_bool, check_optional_int
from engine.device import Device, parse_device
from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "output0"


#: What an Ultralytics checkpoint may name besides torch's own tensor types (which
#: ``weights_only`` loading always allows): module classes and these plain containers.
_SAFE_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "__builtin__.set",
        "builtins.dict",
        "builtins.list",
        "types.SimpleNamespace",
        "ultralytics.utils.IterableSimpleNamespace",
    }
)


def check_checkpoint_globals(path: Path) -> None:
    """Refuse a ``.pt`` whose pickle names anything but model classes, before it is unpickled.

    A ``.pt`` is a pickle, and unpickling calls whatever functions it names (``os.system``):
    loading one is running code. An Ultralytics checkpoint pickles its whole model, so
    ``torch.load(weights_only=True)`` alone cannot read it; instead torch lists the globals
    the pickle references beyond its tensor types (without unpickling anything), and every
    one must be a ``torch.nn.Module`` subclass or a plain container. The file is then loaded
    by Ultralytics, which can only construct what was checked.

    Raises:
        ModelError: The file is not a ``torch.save`` checkpoint, or it names another global.
    """
    import importlib

    import torch.serialization
    from torch import nn

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as error:  # noqa: BLE001 - zip, pickle and torch errors alike: not a checkpoint
        raise ModelError(
            f"cannot load {path} with PyTorch: not a checkpoint written by torch.save "
            f"({type(error).__name__})"
        ) from None
    for name in names:
        if name in _SAFE_GLOBALS:
            continue
        module_name, _, attribute = name.rpartition(".")
        target: Any = None
        if module_name.startswith(("torch.nn.", "ultralytics.")):
            try:
                target = getattr(importlib.import_module(module_name), attribute, None)
            except ImportError:
                target = None
        if not (isinstance(target, type) and issubclass(target, nn.Module)):
            raise ModelError(
                f"refusing to load {path}: its pickle calls {name!r}, which is not a model class "
                "(a .pt file can run code when loaded; use only model files you trust)"
            )


def _load_ultralytics_checkpoint(path: Path) -> Any:
    """The model of an Ultralytics ``.pt`` checkpoint, with Ultralytics' own loader, after
    :func:`check_checkpoint_globals`."""

    import_ultralytics()
    check_checkpoint_globals(path)
    from ultralytics.nn import tasks

    # The loader's name changed across Ultralytics releases.
    loader = getattr(tasks, "load_checkpoint", None) or getattr(tasks, "attempt_load_one_weight", None)
    if loader is None:  # pragma: no cover - every release has one of them
        raise ModelError("this Ultralytics version has neither load_checkpoint nor attempt_load_one_weight")
    model, _checkpoint = loader(str(path), device="cpu", fuse=True)
    return model


def ultralytics_metadata(model: Any, imgsz: tuple[int, int] | None = None) -> dict[str, str]:
    """ONNX-style metadata strings of an Ultralytics model (what its exports carry).

    Args:
        model: An Ultralytics ``DetectionModel`` (or any module with ``names``/``stride``).
        imgsz: Input size; None takes the training ``imgsz`` from ``model.args`` (or 640).
    """
    names = getattr(model, "names", None) or {}
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    stride = getattr(model, "stride", None)
    stride_px = int(max(float(stride.max()), 32)) if stride is not None else 32
    if imgsz is None:
        args = getattr(model, "args", None) or {}
        size = args.get("imgsz", 640) if isinstance(args, Mapping) else getattr(args, "imgsz", 640)
        imgsz = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return {
        "names": str(names),
        "imgsz": str([int(imgsz[0]), int(imgsz[1])]),
        "stride": str(stride_px),
        "task": str(getattr(model, "task", "detect")),
        "batch": "1",
    }


def _torchscript_metadata(path: Path) -> dict[str, str]:
    """Ultralytics stores its metadata as JSON in the TorchScript archive's ``extra/config.txt``."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("extra/config.txt")), None)
            raw = json.loads(archive.read(name)) if name else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError):
        return {}
    return {key: str(value) for key, value in raw.items()}


def _dtype_name(half: bool) -> str:
    return "float16" if half else "float32"


class TorchBackend(LoadedSpecs):
    """Runs an Ultralytics YOLO model with PyTorch.

    Args:
        model_path: ``.pt`` (Ultralytics checkpoint) or ``.torchscript`` file.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        half: Run in float16 (CUDA only).
        cuda_graph: Capture and replay one CUDA graph per input shape (CUDA only).
        compile: Wrap the model in ``torch.compile``.
        imgsz: Input size reported in the metadata when the file does not carry one.
        intra_op_num_threads: CPU threads for torch (``torch.set_num_threads``; note that
            it is process-wide in torch); None leaves torch's default.

    Raises:
        ConfigError: The device is malformed, or FP16/CUDA graphs are asked for on the CPU.
    """

    #: Not safe to call from several threads at once (one execution context / CUDA graph).
    thread_safe = False

    def __init__(
        self,
        model_path: Path,
        *,
        device: str | Device = "cpu",
        half: bool = False,
        cuda_graph: bool = False,
        compile: bool = False,  # noqa: A002 - mirrors torch.compile
        imgsz: int | None = None,
        intra_op_num_threads: int | None = None,
    ) -> None:
        self._device = parse_device(device)
        for name, value in (("half", half), ("cuda_graph", cuda_graph), ("compile", compile)):
            check_bool(name, value)
        if not self._device.is_cuda and (half or cuda_graph):
            raise ConfigError("half and cuda_graph need a CUDA device; the PyTorch backend was given 'cpu'")
        check_optional_int("imgsz", imgsz, low=32)
        self._threads = check_optional_int("intra_op_num_threads", intra_op_num_threads, low=1)
        self._model_path = Path(model_path)
        self._device_name = str(self._device)
        self._half = half
        self._cuda_graph = cuda_graph
        self._compile = compile
        self._imgsz = imgsz
        self._module: Any = None
        self._model: Any = None
        self._metadata: dict[str, str] = {}
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    @classmethod
    def from_module(
        cls, module: Any, *, metadata: Mapping[str, str], device: str | Device = "cpu", half: bool = False
    ) -> TorchBackend:
        """Wrap an in-memory model (for example the one an exporter just exported).

        Args:
            module: A torch module returning the raw [N, 4 + nc, anchors] output (or a tuple
                whose first item is that output, as Ultralytics' detection models do).
            metadata: The metadata to report (see :func:`ultralytics_metadata`).
            device: Where to run it.
            half: Run in float16 (CUDA only).
        """
        backend = cls(Path("<in-memory>"), device=device, half=half)
        backend._metadata = dict(metadata)
        backend._prepare(module)
        return backend

    def __repr__(self) -> str:
        return f"TorchBackend({str(self._model_path)!r}, device={str(self.device)!r})"

    @property
    def inputs(self) -> list[TensorSpec]:
        """One image input with dynamic batch, height and width."""
        self.load()
        return [TensorSpec(INPUT_NAME, (None, 3, None, None), _dtype_name(self._half))]

    @property
    def outputs(self) -> list[TensorSpec]:
        """One raw prediction output [N, 4 + nc, anchors] (nc from the ``names`` metadata)."""
        self.load()
        channels: int | None = None
        names = self._metadata.get("names")
        if names:
            import ast

            try:
                channels = 4 + len(ast.literal_eval(names))
            except (ValueError, SyntaxError):
                channels = None
        return [TensorSpec(OUTPUT_NAME, (None, channels, None), _dtype_name(self._half))]

    def load(self) -> None:
        """Read the model and move it to the device; does nothing when already loaded.

        Raises:
            ModelError: The file is missing or cannot be read, or CUDA is not available.
        """
        if self._model is not None:
            return
        import torch

        if self._device_name.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {self._device_name!r} asked for, but torch sees no CUDA GPU")
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        path = self._model_path
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        suffix = path.suffix.lower()
        try:
            if suffix == ".pt":
                module = _load_ultralytics_checkpoint(path)
                imgsz = (self._imgsz, self._imgsz) if self._imgsz else None
                self._metadata = ultralytics_metadata(module, imgsz)
            elif suffix == ".torchscript":
                module = torch.jit.load(str(path), map_location="cpu")
                self._metadata = _torchscript_metadata(path)
                if self._imgsz:
                    self._metadata["imgsz"] = str([self._imgsz, self._imgsz])
            else:
                raise ModelError(f"the PyTorch backend reads .pt and .torchscript files, not {path.name}")
        except ModelError:
            raise
        except Exception as error:  # torch.load and Ultralytics raise many types for bad files
            raise ModelError(f"cannot load {path} with PyTorch: {type(error).__name__}: {error}") from error
        self._prepare(module)
        logger.info(
            "loaded %s with PyTorch %s on %s%s",
            path.name,
            torch.__version__,
            self.device,
            " (fp16)" if self._half else "",
        )

    def _prepare(self, module: Any) -> None:
        import torch

        device = torch.device(self._device_name)
        module = module.to(device).eval()
        module = module.half() if self._half else module.float()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self._module = module
        self._model = torch.compile(module) if self._compile else module
        self._graphs = {}

    def _forward(self, images: Any) -> Any:
        import torch

        with torch.inference_mode():
            output = self._model(images)
        # Ultralytics detection models return (predictions, feature maps) outside export mode.
        return output[0] if isinstance(output, list | tuple) else output

    def _forward_graph(self, images: Any) -> Any:
        import torch

        key = tuple(images.shape)
        if key not in self._graphs:
            static_input = images.clone()
            stream = torch.cuda.Stream(images.device)
            stream.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up runs outside the capture (cuDNN picks kernels)
                    self._forward(static_input)
            torch.cuda.current_stream(images.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_output = self._forward(static_input)
            self._graphs[key] = (graph, static_input, static_output)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(images)
        graph.replay()
        # The graph's output buffer is overwritten by the next replay: hand out a copy.
        return static_output.clone()

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one inference.

        Args:
            inputs: ``{"images": batch}``, a float N×3×H×W numpy array or torch tensor.

        Returns:
            ``{"output0": predictions}``: numpy when the input was numpy, else a tensor on
            the backend's device.

        Raises:
            ModelError: The input is missing or malformed, or the model failed.
        """
        import torch

        self.load()
        if INPUT_NAME not in inputs or len(inputs) != 1:
            raise ModelError(f"the PyTorch backend takes one input named {INPUT_NAME!r}, got {list(inputs)}")
        value = inputs[INPUT_NAME]
        as_numpy = isinstance(value, np.ndarray)
        images = torch.from_numpy(value) if as_numpy else value
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ModelError(
                f"input {INPUT_NAME!r} must be an N×3×H×W array or tensor, got {type(value).__name__}"
            )
        images = images.to(
            self._device_name, torch.float16 if self._half else torch.float32, non_blocking=True
        )
        try:
            output = self._forward_graph(images) if self._cuda_graph else self._forward(images)
        except RuntimeError as error:
            raise ModelError(f"{self._model_path.name}: inference failed: {error}") from error
        return {OUTPUT_NAME: output.float().cpu().numpy() if as_numpy else output}

    def close(self) -> None:
        """Release the model (and its CUDA graphs)."""
        self._model = None
        self._module = None
        self._graphs = {}
