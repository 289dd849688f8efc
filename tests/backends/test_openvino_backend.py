"""engine.backends.openvino on the real shared YOLO11n: specs, metadata, detections, errors."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.backends import load_backend
from engine.backends.base import TensorSpec
from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.errors import ConfigError, ModelError
from engine.frame import Batch, Frame
from engine.ops.cpu import letterbox_batch
from engine.stage import Context
from tests.backends.helpers_yolo import HIGHWAY, read_frames
from tests.conftest import shared_path

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytestmark = pytest.mark.openvino

MOTORWAY = "media/traffic/motorway_cctv_320x240_25fps.avi"
INDICES = [0, 120, 240, 360, 480, 600, 720]


@pytest.fixture(scope="module")
def model() -> Path:
    return shared_path("models/yolo11n_fp32_320.onnx")


@pytest.fixture(scope="module")
def ir(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared ONNX saved as an fp32 OpenVINO IR (rt_info carries its metadata)."""
    path = tmp_path_factory.mktemp("ir") / "yolo.xml"
    ov.save_model(ov.Core().read_model(str(model)), str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    frames = read_frames(HIGHWAY, INDICES) + read_frames(MOTORWAY, INDICES)
    batch, _ = letterbox_batch(frames, 320)
    return batch


def _detections(backend: object, blobs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from plugins.yolo_decode import decode_batch

    outputs = np.concatenate(
        [backend.run({"images": blobs[i : i + 1]})["output0"] for i in range(len(blobs))]
    )  # type: ignore[attr-defined]
    return decode_batch(outputs, confidence=0.25, iou=0.7, max_detections=300)


def _agreement(reference: list, candidate: list) -> tuple[float, float, int]:
    from plugins.yolo_decode import match_detections

    matched = ref_total = cand_total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        rows, _, _ = match_detections(ref, cand, iou_threshold=0.5)
        matched, ref_total, cand_total = (
            matched + len(rows),
            ref_total + len(ref[1]),
            cand_total + len(cand[1]),
        )
    return matched / max(cand_total, 1), matched / max(ref_total, 1), ref_total


@pytest.mark.parametrize("kind", ["onnx", "xml"])
def test_loads_the_shared_model_with_its_metadata(kind: str, model: Path, ir: Path) -> None:
    from engine.backends.openvino import OpenVinoBackend

    backend = load_backend(ir) if kind == "xml" else load_backend(model, backend="openvino")
    try:
        assert isinstance(backend, OpenVinoBackend) and backend.thread_safe
        assert str(backend.device) == "cpu"
        assert backend.inputs == [TensorSpec("images", (1, 3, 320, 320), "float32")]
        assert backend.outputs == [TensorSpec("output0", (1, 84, 2100), "float32")]
        metadata = backend.metadata
        assert ast.literal_eval(metadata["names"])[2] == "car"
        assert (
            metadata["imgsz"] == "[320, 320]" and metadata["stride"] == "32" and metadata["task"] == "detect"
        )
        # This CPU's fastest: bf16 where AVX-512 BF16/AMX exist, else f32.
        assert backend.inference_precision in ("bf16", "f32", "f16")
    finally:
        backend.close()


def test_detections_match_onnx_runtime(model: Path, blobs: np.ndarray) -> None:
    reference = OnnxRuntimeBackend(model)
    expected = _detections(reference, blobs)
    reference.close()
    f32 = load_backend(model, backend="openvino", precision="f32")
    auto = load_backend(model, backend="openvino")
    try:
        raw_ref = OnnxRuntimeBackend(model).run({"images": blobs[:1]})["output0"]
        assert np.abs(f32.run({"images": blobs[:1]})["output0"] - raw_ref).max() < 0.05  # px / score
        precision, recall, count = _agreement(expected, _detections(f32, blobs))
        assert count >= 30 and precision >= 0.99 and recall >= 0.99
        precision, recall, _ = _agreement(expected, _detections(auto, blobs))
        assert precision >= 0.95 and recall >= 0.95
    finally:
        f32.close()
        auto.close()


def test_concurrent_calls_each_get_their_own_request(model: Path, blobs: np.ndarray) -> None:
    backend = load_backend(model, backend="openvino", precision="f32", intra_op_num_threads=1)
    expected = [backend.run({"images": blobs[i : i + 1]})["output0"] for i in range(4)]
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(worker: int) -> None:
        for _ in range(3):
            for i in range(4):
                results[worker, i] = backend.run({"images": blobs[i : i + 1]})["output0"]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (_, i), output in results.items():
        np.testing.assert_allclose(output, expected[i], atol=1e-4)
    backend.close()
    # Closed, it compiles again on the next call.
    assert backend.run({"images": blobs[:1]})["output0"].shape == (1, 84, 2100)
    backend.close()


def test_a_free_batch_ir_runs_any_batch_on_static_compiles(
    model: Path, blobs: np.ndarray, tmp_path: Path
) -> None:
    from engine.cli.export.quantize import quantize_openvino

    xml = quantize_openvino(model, tmp_path / "free.xml", None, (320, 320))  # frees the batch axis
    backend = load_backend(xml, precision="f32")
    assert backend.inputs[0].shape[0] is None and backend.outputs[0].shape[0] is None
    alone = [backend.run({"images": blobs[i : i + 1]})["output0"] for i in range(3)]
    together = backend.run({"images": blobs[:3]})["output0"]
    assert together.shape == (3, 84, 2100) and alone[0].shape == (1, 84, 2100)
    np.testing.assert_allclose(together, np.concatenate(alone), atol=1e-3)
    backend.close()


def test_ultralytics_metadata_yaml_beside_an_ir(model: Path, tmp_path: Path) -> None:
    read = ov.Core().read_model(str(model))
    bare = ov.Model(read.get_results(), read.get_parameters(), "bare")  # a new model: no rt_info
    xml = tmp_path / "exported.xml"
    ov.save_model(bare, str(xml), compress_to_fp16=False)
    (tmp_path / "metadata.yaml").write_text(
        "task: detect\nstride: 32\nimgsz:\n- 320\n- 320\nnames:\n  0: person\n  1: car\n"
    )
    from engine.backends.openvino import OpenVinoBackend

    metadata = OpenVinoBackend(xml).metadata
    assert metadata["task"] == "detect" and ast.literal_eval(metadata["names"]) == {0: "person", 1: "car"}


def test_the_detect_stage_runs_openvino(model: Path) -> None:
    from plugins.detect import YoloDetector

    images = read_frames(HIGHWAY, [300, 600])
    layers = {}
    for backend in ("onnxruntime", "openvino"):
        stage = YoloDetector(
            model=model,
            backend=backend,
            backend_options={} if backend == "onnxruntime" else {"precision": "f32"},
        )
        stage.open(Context(workers=2))
        frames = [Frame(source_id="cam", index=i, pts_ns=i, image=image) for i, image in enumerate(images)]
        stage(Batch(frames))
        layers[backend] = [frame.layers["objects"] for frame in frames]
        stage.close()
    for ort_dets, ov_dets in zip(layers["onnxruntime"], layers["openvino"], strict=True):
        assert len(ort_dets) > 0 and list(ort_dets.data["class_name"]) == list(ov_dets.data["class_name"])
        np.testing.assert_allclose(ort_dets.xyxy, ov_dets.xyxy, atol=1.0)


def _corrupt(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"this is not a model")
    if name.endswith(".xml"):
        path.with_suffix(".bin").write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "options", "error", "match"),
    [
        (lambda m, ir, t: t / "missing.xml", {}, ModelError, "model file not found"),
        (lambda m, ir, t: _corrupt(t, "bad.xml"), {}, ModelError, "cannot load .*bad.xml with OpenVINO"),
        (
            lambda m, ir, t: _corrupt(t, "bad.onnx"),
            {"backend": "openvino"},
            ModelError,
            "cannot load .*bad.onnx",
        ),
        (lambda m, ir, t: m, {"backend": "openvino", "device": "cuda"}, ModelError, "runs on the CPU"),
        (
            lambda m, ir, t: m,
            {"backend": "openvino", "precision": "int4"},
            ConfigError,
            "precision: expected one of",
        ),
        (
            lambda m, ir, t: m,
            {"backend": "openvino", "streams": 0},
            ConfigError,
            "streams: expected a positive",
        ),
        (
            lambda m, ir, t: m,
            {"backend": "openvino", "half": True},
            ConfigError,
            "does not accept option.*half",
        ),
        (lambda m, ir, t: m, {"backend": "onnxrt"}, ConfigError, "backend: expected one of"),
        (lambda m, ir, t: ir, {"backend": "onnxruntime"}, ConfigError, "does not read .xml files"),
    ],
)
def test_errors_are_one_clear_line(
    make: object, options: dict, error: type[Exception], match: str, model: Path, ir: Path, tmp_path: Path
) -> None:
    path = make(model, ir, tmp_path)  # type: ignore[operator]
    with pytest.raises(error, match=match) as caught:
        load_backend(path, **options)
    assert "\n" not in str(caught.value)


def test_ir_without_weights_and_wrong_inputs(ir: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(ir.read_bytes())
    with pytest.raises(ModelError, match="no weights file lonely.bin"):
        load_backend(lonely)
    backend = load_backend(ir)
    with pytest.raises(
        ModelError, match=r"input images has shape \[1, 3, 640, 640\], expected \[1, 3, 320, 320\]"
    ):
        backend.run({"images": np.zeros((1, 3, 640, 640), np.float32)})
    with pytest.raises(ModelError, match="unknown input"):
        backend.run({"pixels": np.zeros((1, 3, 320, 320), np.float32)})
    backend.close()


@pytest.mark.slow
def test_vistream_run_on_an_ir_in_a_fresh_process(ir: Path, tmp_path: Path) -> None:
    # A fresh process: OpenVINO must be loaded before GStreamer's plugins, or its first
    # compile aborts the process (engine.backends.preload_runtime).
    import subprocess
    import sys

    pipeline = tmp_path / "ov.yaml"
    pipeline.write_text(
        f"device: cpu\nworkers: 2\nstages:\n  - stage: detect\n    model: {ir}\n  - stage: track\n"
    )
    out = tmp_path / "out"
    video = shared_path(HIGHWAY)
    argv = [sys.executable, "-m", "engine.cli", "run", str(video), "--pipeline", str(pipeline)]
    argv += ["--no-video", "--quiet", "--max-frames", "40", "--out", str(out)]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = (out / "summary.json").read_text()
    assert '"status": "completed"' in summary
