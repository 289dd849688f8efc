"""``vistream export --format openvino [--int8]`` and ONNX Runtime static int8, with their gate."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.backends import load_backend
from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.cli.export.model import ExportOptions, export_model
from engine.cli.export.parity import detection_agreement
from engine.cli.export.quantize import head_prefix, openvino_output, split_frames
from engine.cli.main import main
from engine.errors import ConfigError, ModelError
from tests.backends.helpers_yolo import HIGHWAY, read_frames
from tests.conftest import shared_path

pytest.importorskip("openvino", reason="the openvino extra is not installed")
pytestmark = pytest.mark.openvino

MOTORWAY = "media/traffic/motorway_cctv_320x240_25fps.avi"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared fp32 model (exports default to beside their source)."""
    path = tmp_path_factory.mktemp("model") / "yolo.onnx"
    path.write_bytes(shared_path("models/yolo11n_fp32_320.onnx").read_bytes())
    return path


class _NoCars:
    """A backend whose "car" scores (class 2) are all zero: a model that misses objects."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs

    def run(self, inputs: Any) -> dict[str, Any]:
        output = self._inner.run(inputs)["output0"].copy()
        output[:, 4 + 2] = 0.0
        return {"output0": output}


def test_the_gate_measures_precision_and_recall(model: Path) -> None:
    frames = read_frames(HIGHWAY, [100, 400, 700, 1000])
    reference = OnnxRuntimeBackend(model)
    same = detection_agreement(reference, reference, frames, imgsz=(320, 320), precision_name="fp32")
    assert same.passed and same.precision == same.recall == 1.0 and same.reference_detections >= 8
    missing = detection_agreement(
        reference, _NoCars(reference), frames, imgsz=(320, 320), precision_name="int8"
    )
    assert not missing.passed and missing.recall < 0.9
    assert "recall" in missing.problems[0] and f"{missing.recall:.3f}" in missing.summary()
    reference.close()


def test_frames_for_calibration_and_the_check_never_overlap() -> None:
    video = shared_path(HIGHWAY)
    calib, held = split_frames(video, 12, 5, None)
    assert len(calib) == 12 and len(held) == 5
    assert not any(np.array_equal(a, b) for a in calib for b in held)
    _, other = split_frames(video, 4, 3, shared_path(MOTORWAY))
    assert len(other) == 3 and other[0].shape == (240, 320, 3)


def test_output_paths_and_head_prefix(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    assert openvino_output(source, None, False) == tmp_path / "m_openvino" / "m.xml"
    assert openvino_output(source, None, True) == tmp_path / "m_int8_openvino" / "m.xml"
    assert openvino_output(source, tmp_path / "out", True) == tmp_path / "out" / "m.xml"
    assert openvino_output(source, tmp_path / "x.xml", True) == tmp_path / "x.xml"
    assert head_prefix(["/model.2/conv", "/model.23/cv2/Conv", "/model.9/x"]) == "/model.23/"
    assert head_prefix(["conv1", "fc"]) is None


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "openvino", "int8": True}, "--int8 needs calibration frames"),
        ({"format": "openvino", "half": True}, "--half does not apply to OpenVINO"),
        ({"format": "onnx"}, "already ONNX; use --format engine.*openvino.*--int8"),
        ({"format": "openvino", "check_frames": 0}, "must be positive"),
    ],
)
def test_options_are_validated(model: Path, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        export_model(ExportOptions(source=model, **changes))


@pytest.mark.slow
def test_fp32_ir_runs_in_its_runtime_precision_and_passes_the_gate(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    argv = ["export", str(model), "--format", "openvino", "-o", str(tmp_path / "ir")]
    argv += ["--check-source", str(shared_path(MOTORWAY)), "--check-frames", "12", "--report", str(report)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    xml = tmp_path / "ir" / "yolo.xml"
    assert f"exported {xml}" in printed and "PASSED" in printed
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    parity = json.loads(report.read_text())["parity"]
    assert parity["passed"] and parity["frames"] == 12 and parity["reference_detections"] >= 20
    backend = load_backend(xml)
    assert backend.metadata["imgsz"] == "[320, 320]" and "car" in backend.metadata["names"]
    backend.close()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_int8_exports_are_gated_on_held_out_frames(
    model: Path, tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A small calibration keeps CI short; the gate's verdict is what is tested (both outcomes
    # are legitimate on 16 frames), and the numbers must be the ones it printed.
    output = tmp_path / ("int8" if fmt == "openvino" else "int8.onnx")
    options = ExportOptions(
        source=model,
        format=fmt,
        int8=True,
        calib=shared_path(HIGHWAY),
        calib_frames=16,
        check_frames=12,
        output=output,
    )
    with caplog.at_level(logging.INFO, logger="engine.cli.export.quantize"):
        result = export_model(options, raise_on_mismatch=False)
    parity = result.parity
    assert result.output.is_file() and parity.frames == 12
    assert parity.reference_detections >= 20 and parity.matched > 0.5 * parity.reference_detections
    assert parity.passed == (min(parity.precision, parity.recall) >= 0.95)
    # An int8 export fits the square model to its 320x240 calibration frames.
    assert result.imgsz == (256, 320) and "input resized to 256x320" in caplog.text
    agreement = result.input_agreement
    assert agreement.reference_detections >= 20 and min(agreement.precision, agreement.recall) >= 0.85
    quantized = load_backend(result.output)
    assert "names" in quantized.metadata and quantized.metadata["stride"] == "32"
    assert quantized.metadata["imgsz"] == "[256, 320]" and quantized.inputs[0].shape[2:] == (256, 320)
    if fmt == "openvino":  # YOLO11's attention block: NNCF's transformer scheme
        assert "attention found: transformer scheme" in caplog.text
    if fmt == "onnx":
        import onnx

        ops = {node.op_type for node in onnx.load(str(result.output)).graph.node}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    quantized.close()


def test_a_cut_onnx_model_is_one_error_line(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model.read_bytes()[:5000])
    arguments = ["export", str(cut), "--format", "onnx", "--int8", "--calib", str(shared_path(HIGHWAY))]
    assert main(arguments) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vistream: error: ") and "cut.onnx" in lines[0], lines


@pytest.mark.parametrize(
    ("calib", "expected"),
    [
        ("rtsp://user:hunter2@127.0.0.1:9/cam", "not the rtsp source rtsp://user:***@127.0.0.1:9/cam"),
        ("/dev/video0", "not the v4l2 source /dev/video0"),
        ("ftp://127.0.0.1/clip.mp4", "unsupported source URI scheme 'ftp'"),
    ],
)
def test_calibration_from_a_stream_is_refused_by_name(
    model: Path, calib: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Frames are spread over a whole finite source; a stream is named (its password masked),
    # not folded by Path() into "rtsp:/..." and reported as a missing file.
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(model), "--format", "openvino", "--int8", "--calib", calib])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("vistream export: error: argument --calib: needs a video file or an image folder")
    assert expected in error and "hunter2" not in error


def test_a_file_uri_is_a_calibration_file(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["export", str(model), "--format", "openvino", "--int8", "-o", str(tmp_path)]
    assert main([*arguments, "--calib", "file:///nonexistent/clip.mp4"]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == "vistream: error: calibration source not found: /nonexistent/clip.mp4"
    # The check's own frames are named as such; without --check-source they are --calib's.
    fp32 = ["export", str(model), "--format", "openvino", "-o", str(tmp_path)]
    assert main([*fp32, "--check-source", "/nonexistent/check.mp4"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("check source not found: /nonexistent/check.mp4")
    assert main([*fp32, "--calib", "/nonexistent/clip.mp4"]) == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("calibration source not found: /nonexistent/clip.mp4")
    )


def test_a_failed_gate_raises_from_the_library_as_from_the_cli(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real gate, run on a candidate that really misses every car: a model that fails it.
    import engine.cli.export.parity as parity

    gate = parity.detection_agreement
    monkeypatch.setattr(
        parity,
        "detection_agreement",
        lambda reference, candidate, *args, **kwargs: gate(reference, _NoCars(candidate), *args, **kwargs),
    )
    options = ExportOptions(
        source=model,
        format="openvino",
        output=tmp_path / "ir",
        check_source=shared_path(HIGHWAY),
        check_frames=6,
    )
    # Benchmarks and services call export_model() directly: a failed gate must stop them too.
    refused = r"parity check failed for .*yolo\.xml: .*recall 0\.0.*; kept as yolo\.xml\.refused"
    with pytest.raises(ModelError, match=refused):
        export_model(options)
    # The refused IR is renamed aside: nothing loads it as yolo.xml, and it is kept.
    folder = tmp_path / "ir"
    assert sorted(path.name for path in folder.iterdir()) == ["yolo.bin.refused", "yolo.xml.refused"]
    report = export_model(options, raise_on_mismatch=False).parity
    assert not report.passed and report.recall < 0.9 and (folder / "yolo.xml").is_file()
