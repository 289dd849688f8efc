"""TensorRT: engine files, batch profiles, calibration feeding (pure Python, run everywhere);
building and running engines (marked ``tensorrt`` + ``gpu``: skipped here, where TensorRT
cannot be installed and there is no GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.backends import load_backend
from engine.backends.tensorrt import TensorRTBackend, import_tensorrt, pack_engine, read_engine_file
from engine.backends.trt_builder import (
    BatchProfile,
    BuildOptions,
    batch_profile,
    build_engine,
    profile_shapes,
)
from engine.backends.trt_calibration import CalibrationBatches, CalibratorCore, calibration_frames
from engine.errors import CalibrationError, ConfigError, ModelError
from engine.ops.cpu import letterbox_batch
from tests.backends.helpers_yolo import HIGHWAY, exported_yolo
from tests.conftest import shared_path

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

# --------------------------------------------------------------------------- engine files


def test_engine_file_round_trip(tmp_path: Path) -> None:
    metadata = {"names": "{0: 'car', 1: 'truck'}", "imgsz": "[320, 320]", "stride": "32", "task": "detect"}
    path = tmp_path / "m.engine"
    path.write_bytes(pack_engine(metadata, b"\x00serialized engine\xff"))
    read, engine = read_engine_file(path)
    assert read == metadata and engine == b"\x00serialized engine\xff"


def test_reads_ultralytics_engine_headers(tmp_path: Path) -> None:
    """Ultralytics writes JSON values (names as a dict with string keys, imgsz as a list)."""
    header = json.dumps(
        {"names": {"0": "person", "1": "bicycle"}, "imgsz": [640, 640], "stride": 32}
    ).encode()
    path = tmp_path / "yolo.engine"
    path.write_bytes(len(header).to_bytes(4, "little") + header + b"ENGINE")
    metadata, engine = read_engine_file(path)
    assert metadata == {"names": "{0: 'person', 1: 'bicycle'}", "imgsz": "[640, 640]", "stride": "32"}
    assert engine == b"ENGINE"


@pytest.mark.parametrize(
    "data", [b"", b"ftrt", (1000).to_bytes(4, "little") + b"short", b"\x05\x00\x00\x00notjs"]
)
def test_headerless_engines_are_read_whole(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "plain.plan"
    path.write_bytes(data)
    assert read_engine_file(path) == ({}, data)


def test_backend_needs_a_cuda_device(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the TensorRT backend needs a CUDA device"):
        TensorRTBackend(tmp_path / "m.engine", device="cpu")
    assert str(TensorRTBackend(tmp_path / "m.engine", device="cuda:1").device) == "cuda:1"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "m.engine"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="TensorRT is not installed"):
        load_backend(path, device="cuda")
    with pytest.raises(ModelError, match="TensorRT is not installed"):
        import_tensorrt()
    with pytest.raises(ModelError, match="TensorRT is not installed"):
        build_engine(path, BuildOptions())


# --------------------------------------------------------------------------- profiles


def test_batch_profiles() -> None:
    assert batch_profile(8, dynamic=False) == BatchProfile(8, 8, 8)
    assert batch_profile(32, dynamic=True) == BatchProfile(1, 32, 32)
    assert batch_profile(32, dynamic=True, opt=8).as_tuple() == (1, 8, 32)
    with pytest.raises(ConfigError, match="positive integer"):
        batch_profile(0, dynamic=True)
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        batch_profile(4, dynamic=True, opt=8)


def test_profile_shapes_fill_dynamic_axes() -> None:
    shapes = profile_shapes((-1, 3, -1, -1), BatchProfile(1, 8, 32), (384, 640))
    assert shapes == ((1, 3, 384, 640), (8, 3, 384, 640), (32, 3, 384, 640))
    # A fixed-batch model keeps its static dims and needs a fixed profile of its batch.
    assert profile_shapes((4, 3, 320, 320), BatchProfile(4, 4, 4), (320, 320))[2] == (4, 3, 320, 320)


@pytest.mark.parametrize(
    ("shape", "profile", "imgsz", "match"),
    [
        ((1, 3, 320, 320), BatchProfile(1, 8, 32), (320, 320), "fixed batch of 1; export it with --dynamic"),
        ((-1, 3, 320, 320), BatchProfile(1, 1, 1), (640, 640), "height is fixed at 320, not 640"),
        ((-1, 3, 320), BatchProfile(1, 1, 1), (320, 320), r"expected an N×C×H×W input"),
    ],
)
def test_profile_shapes_reject_mismatches(shape, profile, imgsz, match) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=match):
        profile_shapes(shape, profile, imgsz)


# --------------------------------------------------------------------------- calibration


def test_calibration_frames_from_a_video() -> None:
    frames = calibration_frames(shared_path(HIGHWAY), limit=10)
    assert len(frames) == 10 and all(frame.shape == (240, 320, 3) for frame in frames)
    # Evenly spaced over 1,700 frames: consecutive picks are ~170 frames apart, not neighbours.
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 3


def test_calibration_frames_from_a_folder(tmp_path: Path) -> None:
    for index in range(6):
        cv2.imwrite(str(tmp_path / f"{index:02d}.png"), np.full((20, 30, 3), index * 40, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    frames = calibration_frames(tmp_path, limit=3)
    assert [int(frame[0, 0, 0]) for frame in frames] == [0, 80, 200]  # files 0, 2, 5 (evenly spaced)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="no images"):
        calibration_frames(empty)
    with pytest.raises(CalibrationError, match="not found"):
        calibration_frames(tmp_path / "missing.mp4")
    with pytest.raises(CalibrationError, match="not a video file or an image folder: /dev/null"):
        calibration_frames(Path("/dev/null"))  # it exists, but it is a device


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = [(240, 320), (144, 176), (576, 768)]
    return [rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8) for i in range(count)]


def test_calibration_batches_use_the_inference_letterbox() -> None:
    frames = _frames(7)
    batches = CalibrationBatches(frames, (320, 320), batch_size=3)
    assert len(batches) == 2 and batches.shape == (3, 3, 320, 320)
    produced = [batch.copy() for batch in batches]
    assert len(produced) == 2  # the 7th frame does not make a full batch
    for position, batch in enumerate(produced):
        expected, _ = letterbox_batch(frames[position * 3 : position * 3 + 3], (320, 320))
        assert np.array_equal(batch, expected)
    with pytest.raises(CalibrationError, match="at least 8 frames"):
        CalibrationBatches(frames, (320, 320), batch_size=8)


def test_calibration_fingerprint_tracks_the_data() -> None:
    frames = _frames(6)
    fingerprint = CalibrationBatches(frames, (320, 320), 2).fingerprint()
    assert fingerprint == CalibrationBatches([f.copy() for f in frames], (320, 320), 2).fingerprint()
    changed = [f.copy() for f in frames]
    changed[4][0, 0, 0] ^= 1
    assert CalibrationBatches(changed, (320, 320), 2).fingerprint() != fingerprint
    assert CalibrationBatches(frames, (640, 640), 2).fingerprint() != fingerprint
    assert CalibrationBatches(frames, (320, 320), 3).fingerprint() != fingerprint


class _DeviceBuffer:
    """Stands in for a torch CUDA tensor: holds a copy and exposes its address."""

    def __init__(self, batch: np.ndarray) -> None:
        self.array = batch.copy()

    def data_ptr(self) -> int:
        return int(self.array.ctypes.data)


def test_calibrator_feeds_every_batch_then_stops(tmp_path: Path) -> None:
    frames = _frames(4)
    uploads: list[_DeviceBuffer] = []

    def upload(batch: np.ndarray) -> _DeviceBuffer:
        uploads.append(_DeviceBuffer(batch))
        return uploads[-1]

    core = CalibratorCore(CalibrationBatches(frames, (64, 64), 2), tmp_path / "c.calib", upload)
    assert core.batch_size() == 2
    first = core.next_batch(["images"])
    assert first == [uploads[0].data_ptr()]
    expected, _ = letterbox_batch(frames[:2], (64, 64))
    assert np.array_equal(uploads[0].array, expected)
    assert core.next_batch(["images"]) == [uploads[1].data_ptr()]
    assert core.next_batch(["images"]) is None and core.fed == 2
    with pytest.raises(CalibrationError, match="one image input"):
        CalibratorCore(CalibrationBatches(frames, (64, 64), 2), None, upload).next_batch(["a", "b"])


def test_calibrator_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "yolo.calib"
    core = CalibratorCore(None, path, lambda batch: batch)
    assert core.read_cache() is None and core.next_batch(["images"]) is None
    core.write_cache(b"TRT-1000-EntropyCalibration2\nimages: 3c010204\n")
    again = CalibratorCore(None, path, lambda batch: batch)
    assert again.read_cache() == b"TRT-1000-EntropyCalibration2\nimages: 3c010204\n"


# --------------------------------------------------------------------------- real TensorRT


@pytest.mark.tensorrt  # skipped (with TensorRT's reason) where it does not import
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_built_engine_matches_onnx_runtime(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, precision: str
) -> None:
    from engine.backends.engine_cache import EngineCache
    from engine.backends.trt_builder import build_cached
    from engine.cli.export.model import onnx_metadata
    from engine.cli.export.parity import compare_backends

    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = exported_yolo(tmp_path_factory)
    options = BuildOptions(precision=precision, profile=BatchProfile(1, 8, 16), imgsz=(320, 320))
    calibration = CalibrationBatches(model.frames, (320, 320), 8) if precision == "int8" else None
    cache = EngineCache(tmp_path / "cache")
    path, built = build_cached(
        model.onnx_dynamic,
        options,
        metadata=onnx_metadata(model.onnx_dynamic),
        cache=cache,
        calibration=calibration,
    )
    assert built
    assert build_cached(
        model.onnx_dynamic,
        options,
        metadata=onnx_metadata(model.onnx_dynamic),
        cache=cache,
        calibration=calibration,
    ) == (path, False)
    engine = load_backend(path, device="cuda")
    assert engine.inputs[0].dynamic_batch and engine.metadata["imgsz"] == "[320, 320]"
    onnx = load_backend(model.onnx_dynamic)
    report = compare_backends(onnx, engine, model.frames, imgsz=(320, 320), precision=precision)
    assert report.passed, report.summary()
