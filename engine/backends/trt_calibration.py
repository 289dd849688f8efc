"""INT8 calibration for the TensorRT builder: real frames, inference preprocessing, a cache.

Frames come evenly spaced from a video, or from an image folder, go through
:func:`engine.ops.cpu.letterbox_batch` exactly as at inference time, and are fed to TensorRT in
fixed-size batches. :class:`CalibratorCore` holds the feeding and caching logic in pure
Python (tested everywhere); :func:`make_entropy_calibrator` wraps it in TensorRT's
``IInt8EntropyCalibrator2`` (NOT EXECUTED HERE: TensorRT cannot be installed on this
project's development machines).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.backends.tensorrt import import_tensorrt
from engine.errors import CalibrationError, ConfigError
from engine.ops.cpu import letterbox_batch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def calibration_frames(
    source: Path, *, limit: int = 256, role: str = "calibration source"
) -> list[np.ndarray]:
    """Up to ``limit`` BGR frames from a video (evenly spaced) or an image folder (sorted).

    ``role`` names the source in errors (``"check source"``, ...): the same reader serves
    calibration, the export's checks and ``bench model``.

    Raises:
        CalibrationError: The source is missing, unreadable or has no frames.
    """
    source = Path(source)
    if limit < 1:
        raise ConfigError(f"calibration frame limit must be positive, got {limit}")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CalibrationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {role} folder {source}")
        picks = np.unique(np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int))
        frames = [
            image
            for image in (cv2.imread(str(files[i]), cv2.IMREAD_COLOR) for i in picks)
            if image is not None
        ]
    elif source.is_file():
        frames = _video_frames(source, limit)
    elif source.exists():
        raise CalibrationError(f"{role} is not a video file or an image folder: {source}")
    else:
        raise CalibrationError(f"{role} not found: {source}")
    if not frames:
        raise CalibrationError(f"no readable frames in {role} {source}")
    return frames


def _video_frames(path: Path, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        # Decode sequentially and keep every step-th frame: seeking is unreliable in many codecs.
        step = max(1, total // limit) if total > 0 else 1
        frames: list[np.ndarray] = []
        index = 0
        while len(frames) < limit:
            ok, image = capture.read()
            if not ok:
                break
            if index % step == 0:
                frames.append(image)
            index += 1
        return frames
    finally:
        capture.release()


class CalibrationBatches:
    """Fixed-size float32 batches of letterboxed frames, preprocessed exactly like inference.

    Args:
        frames: BGR uint8 frames (any sizes).
        imgsz: Model input ``(height, width)``.
        batch_size: Images per batch; a last partial batch is dropped (TensorRT wants full
            batches of one size), so at least ``batch_size`` frames are needed.

    Raises:
        CalibrationError: Fewer frames than one batch.
    """

    def __init__(self, frames: Sequence[np.ndarray], imgsz: tuple[int, int], batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be positive, got {batch_size}")
        if len(frames) < batch_size:
            raise CalibrationError(
                f"calibration needs at least {batch_size} frames (one batch), got {len(frames)}"
            )
        self.frames = list(frames)
        self.imgsz = (int(imgsz[0]), int(imgsz[1]))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.frames) // self.batch_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of every batch."""
        return (self.batch_size, 3, *self.imgsz)

    def __iter__(self) -> Iterator[np.ndarray]:
        buffer = np.empty(self.shape, np.float32)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch, _ = letterbox_batch(self.frames[start : start + self.batch_size], self.imgsz, out=buffer)
            yield batch

    def fingerprint(self) -> str:
        """sha256 of the frames, the input size and the batch size (for the engine key)."""
        digest = hashlib.sha256(f"{self.imgsz}|{self.batch_size}|{len(self)}".encode())
        for frame in self.frames[: len(self) * self.batch_size]:
            digest.update(str(frame.shape).encode())
            digest.update(np.ascontiguousarray(frame).data)
        return digest.hexdigest()


class CalibratorCore:
    """What an INT8 calibrator does, without TensorRT: feed batches, keep the cache.

    TensorRT's calibrator subclass (:func:`make_entropy_calibrator`) forwards its four
    methods here, so the feeding and caching logic is tested on any machine.

    Args:
        batches: The calibration batches (None when only a cache is used).
        cache_path: Calibration cache file (read when present, written after calibration).
        upload: Copies one numpy batch to device memory and returns an object with
            ``data_ptr()`` (a torch CUDA tensor in production) that stays alive until the
            next batch.
    """

    def __init__(
        self,
        batches: CalibrationBatches | None,
        cache_path: Path | None,
        upload: Callable[[np.ndarray], Any],
    ) -> None:
        self.batches = batches
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._upload = upload
        self._iterator = iter(batches) if batches is not None else None
        self._current: Any = None  # keeps the device copy alive while TensorRT reads it
        self.fed = 0

    def batch_size(self) -> int:
        """Images per calibration batch."""
        return self.batches.batch_size if self.batches is not None else 1

    def next_batch(self, names: Sequence[str]) -> list[int] | None:
        """Device pointers of the next batch (one per input name), or None when done."""
        if self._iterator is None:
            return None
        if len(names) != 1:
            raise CalibrationError(f"calibration feeds one image input, the network has {list(names)}")
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._current = None
            return None
        self._current = self._upload(batch)
        self.fed += 1
        logger.info("calibration batch %d/%d", self.fed, len(self.batches or ()))
        return [int(self._current.data_ptr())]

    def read_cache(self) -> bytes | None:
        """The calibration cache's bytes, when the file exists."""
        if self.cache_path is not None and self.cache_path.is_file():
            logger.info("using calibration cache %s", self.cache_path)
            return self.cache_path.read_bytes()
        return None

    def write_cache(self, cache: bytes) -> None:
        """Store the calibration cache TensorRT computed."""
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        self.cache_path.write_bytes(bytes(cache))
        logger.info("wrote calibration cache %s", self.cache_path)


def torch_uploader(device: str = "cuda") -> Callable[[np.ndarray], Any]:
    """An ``upload`` for :class:`CalibratorCore` that copies batches into torch CUDA memory."""
    import torch

    def upload(batch: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device)

    return upload


def make_entropy_calibrator(core: CalibratorCore) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` that delegates to ``core``."""
    trt = import_tensorrt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the base initialised

        def get_batch_size(self) -> int:
            return core.batch_size()

        def get_batch(self, names: list[str]) -> list[int] | None:
            return core.next_batch(names)

        def read_calibration_cache(self) -> bytes | None:
            return core.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            core.write_cache(bytes(cache))

    return EntropyCalibrator()
