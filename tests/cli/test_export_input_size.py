"""A square YOLO export's input fitted to the frames (``vistream export --input-size``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.cli.export.input_size import fitted_hw, make_anchors, parse_input_size, resize_yolo_input
from engine.cli.export.model import ExportOptions, export_model
from engine.cli.export.parity import detection_agreement
from engine.errors import ConfigError, ModelError
from tests.backends.helpers_yolo import HIGHWAY, read_frames
from tests.conftest import shared_path

onnx = pytest.importorskip("onnx")


def _square_model() -> object:
    return onnx.load(str(shared_path("models/yolo11n_fp32_320.onnx")))


def test_sizes_are_parsed_and_fitted_like_ultralytics_auto_letterbox() -> None:
    assert parse_input_size("auto") == "auto" and parse_input_size("square") == "square"
    assert parse_input_size("256x320") == (256, 320) and parse_input_size(" 64X96 ") == (64, 96)
    for bad in ("320", "250x320", "0x320", "big"):
        with pytest.raises(ConfigError, match="--input-size"):
            parse_input_size(bad)
    assert fitted_hw([(240, 320, 3)], 320) == (256, 320)  # 4:3, as LetterBox(auto=True)
    assert fitted_hw([(1080, 1920, 3)], 320) == (192, 320)  # 16:9: 180 rows, up to 192
    assert fitted_hw([(240, 320, 3), (320, 240, 3)], 320) == (320, 320)  # both ways: the square
    assert fitted_hw([(320, 320, 3)], 320) == (320, 320)
    with pytest.raises(ModelError, match="needs frames"):
        fitted_hw([], 320)


def test_anchors_match_the_exported_square_grid() -> None:
    points, strides = make_anchors(320, 320)
    assert points.shape == (2, 2100) and strides.shape == (2100,)
    exported = {t.name: onnx.numpy_helper.to_array(t) for t in _square_model().graph.initializer}
    assert np.array_equal(exported["/model.23/Constant_12_output_0"][0], points)
    assert np.array_equal(exported["/model.23/Constant_15_output_0"][0], strides)
    assert make_anchors(256, 320)[0].shape == (2, 1680)


def test_a_resized_model_runs_and_detects_what_the_square_one_does(tmp_path: Path) -> None:
    resized = resize_yolo_input(_square_model(), (256, 320))
    path = tmp_path / "rect.onnx"
    onnx.save(resized, str(path))
    backend = OnnxRuntimeBackend(path)
    square = OnnxRuntimeBackend(shared_path("models/yolo11n_fp32_320.onnx"))
    backend.load()
    assert backend.inputs[0].shape[2:] == (256, 320) and backend.metadata["imgsz"] == "[256, 320]"
    output = backend.run({"images": np.zeros((1, 3, 256, 320), np.float32)})["output0"]
    assert output.shape == (1, 84, 1680)
    frames = read_frames(HIGHWAY, list(range(40, 1700, 104)))
    agreement = detection_agreement(
        square, backend, frames, imgsz=(320, 320), candidate_imgsz=(256, 320), precision_name="rect"
    )
    # Two letterboxes of one network (48 frames of each traffic video: 0.96 / 0.95); a
    # broken rewrite (anchors, attention grid) would match next to nothing.
    assert agreement.reference_detections >= 40
    assert min(agreement.precision, agreement.recall) >= 0.85, agreement
    backend.close()

    # What the agreement guards against: anchors off by a few cells (a wrong rewrite).
    for tensor in resized.graph.initializer:
        if tensor.name == "/model.23/Constant_12_output_0":
            shifted = onnx.numpy_helper.to_array(tensor) + np.float32(3.0)
            tensor.CopyFrom(onnx.numpy_helper.from_array(shifted, tensor.name))
    onnx.save(resized, str(path))
    broken = OnnxRuntimeBackend(path)
    wrong = detection_agreement(
        square, broken, frames, imgsz=(320, 320), candidate_imgsz=(256, 320), precision_name="rect"
    )
    assert max(wrong.precision, wrong.recall) < 0.5
    broken.close()
    square.close()


def test_graphs_it_does_not_know_are_refused() -> None:
    with pytest.raises(ModelError, match="no anchor grid"):
        resize_yolo_input(onnx.load(str(shared_path("models/face_detection_yunet_2023mar.onnx"))), (256, 320))
    model = _square_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[3].dim_value = 256
    with pytest.raises(ModelError, match="static square NCHW input"):
        resize_yolo_input(model, (256, 320))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "engine", "input_size": "256x320"}, "--input-size applies to --format openvino"),
        ({"format": "openvino", "input_size": "auto"}, "--input-size auto fits the input to frames"),
        ({"format": "openvino", "input_size": "300x320"}, "multiples of 32"),
    ],
)
def test_input_size_options_are_validated(changes: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        export_model(ExportOptions(source=shared_path("models/yolo11n_fp32_320.onnx"), **changes))


def test_int8_cpu_exports_fit_their_frames_by_default() -> None:
    source = shared_path("models/yolo11n_fp32_320.onnx")
    calib = shared_path(HIGHWAY)
    assert ExportOptions(source=source, format="openvino", int8=True, calib=calib).input_hw == "auto"
    assert ExportOptions(source=source, format="openvino").input_hw == "square"
    assert ExportOptions(source=source, format="engine", int8=True, calib=calib).input_hw == "square"
    square = ExportOptions(source=source, format="openvino", int8=True, calib=calib, input_size="square")
    assert square.input_hw == "square"
