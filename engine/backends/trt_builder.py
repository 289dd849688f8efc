"""ONNX → TensorRT engine builder: FP32/FP16/INT8, workspace limit, min/opt/max batch.

NOT EXECUTED HERE: TensorRT cannot be installed on this project's development machines;
:func:`build_engine` and the calibrator class are written against the TensorRT >= 10
Python API from its documentation (``OnnxParser``, ``IBuilderConfig``,
``add_optimization_profile``, ``IInt8EntropyCalibrator2``). Everything around them is pure
Python and tested without TensorRT: the batch profile and its shapes, the calibration
frames and batches (the same letterbox as inference), the calibrator's batch feeding and
cache, and the cache key (:mod:`engine.backends.engine_cache`).

INT8 calibration (:mod:`engine.backends.trt_calibration`): frames come evenly spaced from a
video, or from an image folder, go through :func:`engine.ops.cpu.letterbox_batch` exactly as at
inference time, and are fed in batches of the profile's *opt* size (TensorRT calibrates a
dynamic-shape network at the opt shapes of its first profile). The calibration cache is
written next to the engine cache and read back on the next build, so recalibration only
happens when the model or the calibration data change (both are in the engine key).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends.engine_cache import PRECISIONS, EngineCache, EngineKey, file_sha256, gpu_identity
from engine.backends.tensorrt import import_tensorrt, pack_engine
from engine.backends.trt_calibration import (
    CalibrationBatches,
    CalibratorCore,
    make_entropy_calibrator,
    torch_uploader,
)
from engine.checks import check_int
from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"/model\.(\d+)/")


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of an optimisation profile: the engine accepts ``min..max``, tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.as_tuple()}")

    def as_tuple(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return (self.min, self.opt, self.max)


def batch_profile(batch: int, *, dynamic: bool, opt: int | None = None) -> BatchProfile:
    """The profile for ``--batch N``: exactly N when static; 1..N tuned for ``opt`` (N) when dynamic.

    Raises:
        ConfigError: The sizes are not positive or ``opt`` is above ``batch``.
    """
    check_int("batch", batch, low=1)
    if not dynamic:
        return BatchProfile(batch, batch, batch)
    return BatchProfile(1, batch if opt is None else opt, batch)


def profile_shapes(
    input_shape: Sequence[int], profile: BatchProfile, imgsz: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Min/opt/max shapes of an N×C×H×W input whose dimensions may be -1 (dynamic).

    A dynamic batch takes the profile; dynamic height and width take ``imgsz`` (one size:
    letterboxed frames always have it). Static dimensions are kept, and a static batch must
    equal a fixed profile.

    Raises:
        ConfigError: The input is not 4-D, or a static batch or size disagrees with the request.
    """
    shape = [int(d) for d in input_shape]
    if len(shape) != 4:
        raise ConfigError(f"expected an N×C×H×W input, got shape {shape}")
    batch, channels, height, width = shape
    if batch != -1 and profile.as_tuple() != (batch, batch, batch):
        raise ConfigError(
            f"the ONNX model has a fixed batch of {batch}; export it with --dynamic for the profile "
            f"{profile.as_tuple()}, or ask for --batch {batch}"
        )
    for name, static, wanted in (("height", height, imgsz[0]), ("width", width, imgsz[1])):
        if static != -1 and static != wanted:
            raise ConfigError(f"the ONNX model's input {name} is fixed at {static}, not {wanted}")
    size = (channels, imgsz[0], imgsz[1])
    return (profile.min, *size), (profile.opt, *size), (profile.max, *size)


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuildOptions:
    """How to build an engine.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (int8 also enables fp16 for layers that
            do not quantize well).
        profile: Batch sizes of the optimisation profile.
        imgsz: Input ``(height, width)``.
        workspace_bytes: Builder workspace limit; None lets TensorRT use what it needs.
    """

    precision: str = "fp16"
    profile: BatchProfile = BatchProfile(1, 1, 1)
    imgsz: tuple[int, int] = (640, 640)
    workspace_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise ConfigError(f"workspace must be positive, got {self.workspace_bytes} bytes")


def engine_key(
    onnx_path: Path,
    options: BuildOptions,
    *,
    tensorrt_version: str,
    gpu: tuple[str, tuple[int, int]],
    calibration_sha256: str | None = None,
) -> EngineKey:
    """The cache key of an engine built from ``onnx_path`` with ``options`` on ``gpu``."""
    name, capability = gpu
    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=tensorrt_version,
        gpu_name=name,
        compute_capability=capability,
        precision=options.precision,
        batch_profile=options.profile.as_tuple(),
        imgsz=options.imgsz,
        workspace_bytes=options.workspace_bytes,
        calibration_sha256=calibration_sha256 if options.precision == "int8" else None,
    )


def build_engine(onnx_path: Path, options: BuildOptions, *, calibrator: Any = None) -> bytes:
    """Parse an ONNX file and build a serialized TensorRT engine (no metadata header).

    Raises:
        ModelError: TensorRT is missing, the ONNX file does not parse, or the build fails.
        ConfigError: The profile does not fit the model, or int8 is asked without a calibrator.
    """
    trt = import_tensorrt()
    if options.precision == "int8" and calibrator is None:
        raise ConfigError("int8 engines need calibration data (--calib SOURCE)")
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    profile = builder.create_optimization_profile()
    for position in range(network.num_inputs):
        tensor = network.get_input(position)
        low, opt, high = profile_shapes(tuple(tensor.shape), options.profile, options.imgsz)
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        _keep_scores_in_fp32(trt, network, config)
    logger.info(
        "building a %s TensorRT %s engine from %s (batch %s, %dx%d)",
        options.precision,
        trt.__version__,
        onnx_path.name,
        options.profile.as_tuple(),
        options.imgsz[1],
        options.imgsz[0],
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return bytes(serialized)


def _keep_scores_in_fp32(trt: Any, network: Any, config: Any) -> None:
    """Keep the detection head's sigmoid (the class scores) out of INT8.

    INT8 rounding of the last activation shifts confidences near the threshold; Ultralytics
    pins the same layers for the same reason. Only layers of the last ``/model.N/`` block
    (the head) are touched; every SiLU elsewhere is a sigmoid too and stays quantized.
    """
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    blocks = [int(match.group(1)) for name in names if (match := _BLOCK.search(name))]
    if not blocks:
        return
    head = f"/model.{max(blocks)}/"
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if head in layer.name and layer.type == trt.LayerType.ACTIVATION and "sigmoid" in layer.name.lower():
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        logger.info("keeping %d head sigmoid layer(s) in fp32", pinned)


def build_cached(
    onnx_path: Path,
    options: BuildOptions,
    *,
    metadata: dict[str, str],
    cache: EngineCache | None = None,
    device: str = "cuda",
    calibration: CalibrationBatches | None = None,
) -> tuple[Path, bool]:
    """Build (or reuse) the engine for ``onnx_path`` in the engine cache.

    Args:
        onnx_path: The ONNX model.
        options: Build options.
        metadata: Written into the engine file's header (the ONNX metadata: names, imgsz...).
        cache: The engine cache (default directory when None).
        device: The CUDA device to build for.
        calibration: INT8 calibration batches (batch size should be the profile's opt).

    Returns:
        The engine file in the cache and whether it was built now.
    """
    trt = import_tensorrt()
    cache = cache or EngineCache()
    fingerprint = calibration.fingerprint() if calibration is not None else None
    key = engine_key(
        onnx_path,
        options,
        tensorrt_version=str(trt.__version__),
        gpu=gpu_identity(device),
        calibration_sha256=fingerprint,
    )
    stem = Path(onnx_path).stem

    def build() -> bytes:
        calibrator = None
        if options.precision == "int8":
            cache_path = cache.root / f"{stem}-{key.onnx_sha256[:16]}-{(fingerprint or 'none')[:16]}.calib"
            core = CalibratorCore(calibration, cache_path, torch_uploader(device))
            calibrator = make_entropy_calibrator(core)
        header = {
            **metadata,
            "precision": options.precision,
            "batch_profile": list(options.profile.as_tuple()),
            "tensorrt": str(trt.__version__),
            "gpu": key.gpu_name,
        }
        return pack_engine(header, build_engine(onnx_path, options, calibrator=calibrator))

    return cache.get_or_build(key, stem, build)
