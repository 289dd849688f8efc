"""``vistream export``: Ultralytics → ONNX, the parity check (passing and failing), the options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.backends import load_backend
from engine.cli.export.model import ExportOptions, check_frames, export_model
from engine.cli.export.parity import TOLERANCES, compare_backends
from engine.cli.main import main
from engine.errors import ConfigError, ModelError
from tests.backends.helpers_yolo import HIGHWAY, IMGSZ, ExportedYolo, exported_yolo
from tests.conftest import shared_path

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> ExportedYolo:
    return exported_yolo(tmp_path_factory)


def test_cli_exports_a_checkpoint_and_checks_it(
    yolo: ExportedYolo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, report = tmp_path / "out" / "model.onnx", tmp_path / "report.json"
    argv = [
        "export",
        str(yolo.pt),
        "--imgsz",
        "320",
        "--dynamic",
        "--batch",
        "4",
        "-o",
        str(output),
        "--check-source",
        str(shared_path(HIGHWAY)),
        "--check-frames",
        "6",
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"exported {output}" in printed and "PASSED" in printed
    backend = load_backend(output)
    assert backend.inputs[0].dynamic_batch and backend.metadata["imgsz"] == "[320, 320]"
    result = json.loads(report.read_text())
    parity = result["parity"]
    assert parity["passed"] and parity["frames"] == 6
    # The responsive test model gives real detections, and they all match.
    assert parity["reference_detections"] >= 10
    assert parity["matched"] == parity["reference_detections"] == parity["candidate_detections"]
    assert parity["min_matched_iou"] >= 0.95 and parity["max_confidence_diff"] <= 0.01
    assert parity["raw_anchors_compared"] == 600 and parity["raw_max_score_diff"] < 1e-3


def test_yaml_with_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ``yolo11n.yaml`` weights give no detection above 0.25: the raw comparison carries
    the check (and still compares every frame's best anchors), and nothing lands in the cwd."""
    monkeypatch.chdir(tmp_path)
    options = ExportOptions(
        source=Path("yolo11n.yaml"), output=tmp_path / "y.onnx", imgsz=320, check_frames=2
    )
    result = export_model(options)
    assert result.output.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["y.onnx"]
    assert result.parity.passed and result.parity.reference_detections == 0
    assert result.parity.raw_anchors_compared == 200
    assert "random weights?" in result.parity.summary()
    assert not load_backend(result.output).inputs[0].dynamic_batch  # fixed batch without --dynamic


class _Perturbed:
    """A backend whose outputs are edited after running the wrapped one."""

    def __init__(self, inner: Any, edit: Any) -> None:
        self.inner, self.edit = inner, edit
        self.inputs, self.outputs, self.metadata, self.device = (
            inner.inputs,
            inner.outputs,
            inner.metadata,
            "cpu",
        )

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {name: np.array(value, copy=True) for name, value in self.inner.run(inputs).items()}
        self.edit(out["output0"])
        return out

    def close(self) -> None:
        self.inner.close()


def _shift_boxes(raw: np.ndarray) -> None:
    raw[:, 0] += 6.0  # every box 6 px to the right


def _swap_best_class(raw: np.ndarray) -> None:
    best = raw[:, 4:].argmax(axis=1)  # (N, anchors)
    scores = np.take_along_axis(raw[:, 4:], best[:, None], axis=1)
    np.put_along_axis(raw[:, 4:], best[:, None], 0.0, axis=1)
    np.put_along_axis(raw[:, 4:], ((best + 1) % 80)[:, None], scores, axis=1)


def _lower_scores(raw: np.ndarray) -> None:
    raw[:, 4:] *= 0.9


@pytest.mark.parametrize(
    ("edit", "expected"),
    [(_shift_boxes, "box IoU"), (_swap_best_class, "became class"), (_lower_scores, "score differs by")],
)
def test_parity_check_catches_mismatches(yolo: ExportedYolo, edit: Any, expected: str) -> None:
    reference = load_backend(yolo.onnx_dynamic)
    candidate = _Perturbed(load_backend(yolo.onnx_dynamic), edit)
    report = compare_backends(reference, candidate, yolo.frames[:4], imgsz=(IMGSZ, IMGSZ))
    assert not report.passed
    assert any(expected in problem for problem in report.problems), report.summary()
    assert "FAILED" in report.summary()
    # Identical models pass.
    assert compare_backends(
        reference, load_backend(yolo.onnx_fixed), yolo.frames[:4], imgsz=(IMGSZ, IMGSZ)
    ).passed


def test_failed_check_fails_the_command(
    yolo: ExportedYolo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli.export import parity

    original = parity.raw_outputs

    def broken_export(backend: Any, frames: Any, imgsz: Any) -> np.ndarray:
        raw = original(backend, frames, imgsz)
        if "onnx" in str(getattr(backend, "model_path", "")):
            _shift_boxes(raw)
        return raw

    monkeypatch.setattr(parity, "raw_outputs", broken_export)
    report = tmp_path / "report.json"
    argv = [
        "export",
        str(yolo.pt),
        "--imgsz",
        "320",
        "-o",
        str(tmp_path / "m.onnx"),
        "--check-frames",
        "2",
        "--check-source",
        str(shared_path(HIGHWAY)),
        "--report",
        str(report),
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "parity check failed for" in error and "box IoU" in error and "kept as m.onnx.refused" in error
    assert json.loads(report.read_text())["parity"]["passed"] is False  # the report is written anyway
    # The refused model is renamed aside, not left where `run` would load it.
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "m.onnx.refused").is_file()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"source": Path("model.tflite")}, "expected a .pt, .yaml or .onnx model"),
        ({"source": Path("missing.pt")}, "model file not found"),
        ({"format": "tflite"}, "format must be one of onnx, engine"),
        ({"int8": True}, "--int8 with --format onnx quantizes an .onnx model"),
        ({"int8": True, "format": "engine"}, "--format engine --int8 --calib SOURCE"),
        ({"int8": True, "half": True}, "choose one of --half and --int8"),
        ({"half": True}, "an FP16 ONNX export runs on the GPU"),
        ({"batch": 0}, "must be positive"),
        ({"imgsz": 300}, "multiple of 32"),
        ({"workspace_gb": -1.0}, "--workspace must be positive"),
    ],
)
def test_options_are_validated(yolo: ExportedYolo, changes: dict[str, Any], match: str) -> None:
    options = ExportOptions(source=yolo.pt, **{k: v for k, v in changes.items() if k != "source"})
    if "source" in changes:
        options = ExportOptions(source=changes["source"])
    with pytest.raises(ConfigError, match=match):
        export_model(options)


def test_onnx_to_onnx_is_refused(yolo: ExportedYolo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(yolo.onnx_fixed)]) == 2
    assert "is already ONNX; use --format engine" in capsys.readouterr().err


def test_engine_export_without_tensorrt(yolo: ExportedYolo, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    options = ExportOptions(
        source=yolo.onnx_dynamic, format="engine", output=tmp_path / "m.engine", cache_dir=tmp_path / "cache"
    )
    with pytest.raises(ModelError, match="TensorRT is not installed"):
        export_model(options)


def test_check_frames() -> None:
    synthetic = check_frames(None, 3)
    assert [frame.shape for frame in synthetic] == [(480, 640, 3), (360, 640, 3), (480, 640, 3)]
    assert all(frame.dtype == np.uint8 for frame in synthetic)
    assert all(np.array_equal(a, b) for a, b in zip(synthetic, check_frames(None, 3), strict=True))
    assert len(check_frames(shared_path(HIGHWAY), 5)) == 5


def test_tolerances_are_ordered() -> None:
    assert TOLERANCES["fp32"] == type(TOLERANCES["fp32"])(iou_min=0.95, confidence_abs=0.01)
    assert TOLERANCES["fp32"].iou_min > TOLERANCES["fp16"].iou_min > TOLERANCES["int8"].iou_min
