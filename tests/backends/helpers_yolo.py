"""A YOLO11n built offline from ``yolo11n.yaml``, exported once per test session.

Random weights make a poor test model: YOLO11n's default initialisation shrinks the
activations ~1e8-fold through the network, so every image gives the same output and the
class scores all sit at the head's bias prior (~1e-4). :func:`make_responsive` fixes that
the way a deployment would not, but a test can: it recalibrates every BatchNorm on real
frames (running statistics = the frames' statistics, so activations keep unit scale) and
raises the class prior, giving boxes and confident, image-dependent, varied detections.
Torch, ONNX and TorchScript all come from the same saved checkpoint, so they share weights
exactly (the checkpoint is float16, as Ultralytics saves them).

Import this module before anything imports Ultralytics: it points Ultralytics at a
temporary settings directory and keeps it offline.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="vistream-test-yolo-"))
os.environ.setdefault("YOLO_VERBOSE", "False")

from tests.conftest import shared_path  # noqa: E402

IMGSZ = 320
HIGHWAY = "media/traffic/highway_overpass_320x240_60fps.avi"


@dataclass(frozen=True)
class ExportedYolo:
    """The session's test model in every format.

    Attributes:
        pt: Ultralytics checkpoint.
        onnx_dynamic: ONNX, dynamic batch (and size), 320.
        onnx_fixed: ONNX, fixed batch 1, 320.
        torchscript: TorchScript, batch 1, 320.
        frames: 8 real highway frames (BGR, 320x240), distinct from the calibration ones.
    """

    pt: Path
    onnx_dynamic: Path
    onnx_fixed: Path
    torchscript: Path
    frames: list[np.ndarray]


def read_frames(relative: str, indices: list[int]) -> list[np.ndarray]:
    """Frames at ``indices`` of a shared video (skips the test when it is absent)."""
    capture = cv2.VideoCapture(str(shared_path(relative)))
    frames, wanted = [], set(indices)
    for index in range(max(indices) + 1):
        ok, image = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(image)
    capture.release()
    assert len(frames) == len(indices), f"{relative} has fewer than {max(indices) + 1} frames"
    return frames


def make_responsive(model: object, frames: list[np.ndarray], *, class_bias: float = -4.0) -> None:
    """Recalibrate BatchNorm statistics on ``frames`` and set the class-score prior (in place)."""
    import torch

    from engine.ops.cpu import letterbox_batch

    batch, _ = letterbox_batch(frames, IMGSZ)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # type: ignore[attr-defined]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()  # type: ignore[attr-defined]
    with torch.no_grad():
        model(torch.from_numpy(batch))  # type: ignore[operator]
    model.eval()  # type: ignore[attr-defined]
    head = model.model[-1]  # type: ignore[attr-defined]
    with torch.no_grad():
        for branch in head.cv3:
            branch[-1].bias.fill_(class_bias)


_CACHE: dict[str, ExportedYolo] = {}


def exported_yolo(tmp_path_factory: pytest.TempPathFactory) -> ExportedYolo:
    """Build (once per session) and return the test model; skips without the shared video."""
    if "model" in _CACHE:
        return _CACHE["model"]
    calibration = read_frames(HIGHWAY, list(range(0, 1600, 100)))
    frames = read_frames(HIGHWAY, [50, 250, 450, 650, 850, 1050, 1250, 1450])
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from engine.cli.export.model import export_onnx, load_yolo

    directory = tmp_path_factory.mktemp("yolo11n")
    torch.manual_seed(0)
    yolo = load_yolo(Path("yolo11n.yaml"))
    make_responsive(yolo.model, calibration)
    pt = directory / "yolo11n_test.pt"
    yolo.save(pt)
    saved = load_yolo(pt)
    onnx_dynamic = export_onnx(saved, directory / "yolo11n_dynamic.onnx", imgsz=IMGSZ, dynamic=True, batch=8)
    onnx_fixed = export_onnx(saved, directory / "yolo11n_fixed.onnx", imgsz=IMGSZ)
    saved.model.pt_path = str(directory / "yolo11n_test.pt")
    torchscript = Path(saved.export(format="torchscript", imgsz=IMGSZ, device="cpu", verbose=False))
    _CACHE["model"] = ExportedYolo(pt, onnx_dynamic, onnx_fixed, torchscript, frames)
    return _CACHE["model"]
