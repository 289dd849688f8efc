"""Training-side export check: ResNet-18 → ONNX (dynamic batch), verified on real face crops."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv

from engine.errors import ModelError
from engine.frame import Batch, Frame
from engine.stage import Context
from plugins.align import FaceAligner
from plugins.emotion import EmotionClassifier
from plugins.faces import FaceDetector
from tests.conftest import shared_path
from tests.plugins.helpers_faces import YUNET

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from engine.cli.export.classifier import (  # noqa: E402  (needs torch, skipped above without it)
    FERPLUS_LABELS,
    check_exportable,
    export_and_verify,
    verify_export,
)

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _face_crops(size: int, count: int = 12) -> np.ndarray:
    """Aligned crops of the first ``count`` labelled expression photos."""
    images = shared_path("media/expressions/images")
    with (images.parent / "labels.csv").open() as handle:
        names = [row["image"] for row in csv.DictReader(handle)][::6][:count]
    frames = [
        Frame(source_id="x", index=i, pts_ns=0, image=cv2.imread(str(images / n)))
        for i, n in enumerate(names)
    ]
    detector = FaceDetector(model=shared_path(YUNET), confidence=0.5)
    detector.open(Context())
    FaceAligner(size=(size, size))(detector(Batch.of(frames)))
    crops = [f.layers["faces"].data["aligned_crop"][f.layers["faces"].data["align_ok"]] for f in frames]
    return np.concatenate(crops)


def _resnet(channels: int = 3, *, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(FERPLUS_LABELS))
    if channels == 1:
        model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model.eval()


def test_resnet18_with_8_classes_at_64px_exports_and_runs_in_the_emotion_stage(tmp_path: Path) -> None:
    crops = _face_crops(64)
    assert len(crops) >= 8
    model = _resnet()
    report = export_and_verify(
        model,
        tmp_path / "fer8.onnx",
        crops,
        height=64,
        width=64,
        labels=FERPLUS_LABELS,
        color="rgb",
        scale=1 / 255,
        **IMAGENET,
    )
    assert report.faces == len(crops) and report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-3 and report.batch_consistent
    # The exported file carries everything the emotion stage needs.
    stage = EmotionClassifier(model=tmp_path / "fer8.onnx", output_probs=True)
    stage.open(Context())
    assert stage.labels == FERPLUS_LABELS and stage.spec is not None and stage.spec.color == "rgb"
    frame = Frame(source_id="x", index=0, pts_ns=0, image=np.zeros((8, 8, 3), np.uint8))
    frame.layers["faces"] = sv.Detections(
        xyxy=np.zeros((len(crops), 4), np.float32), data={"aligned_crop": crops}
    )
    stage(Batch.of([frame]))
    probs = frame.layers["faces"].data["emotion_probs"]
    with torch.no_grad():
        rgb = torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(IMAGENET["mean"])[:, None, None]
        std = torch.tensor(IMAGENET["std"])[:, None, None]
        expected = torch.softmax(model((rgb - mean) / std), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_a_grayscale_48px_variant_exports_too(tmp_path: Path) -> None:
    crops = _face_crops(48, count=6)
    model = _resnet(channels=1, seed=1)
    report = export_and_verify(
        model,
        tmp_path / "fer8_gray.onnx",
        crops,
        height=48,
        width=48,
        labels=FERPLUS_LABELS,
        color="gray",
        scale=1 / 255,
        mean=(0.5,),
        std=(0.5,),
    )
    assert report.top1_agreement == 1.0 and report.max_abs_diff < 1e-3


def test_adaptive_pooling_that_does_not_divide_its_input_fails_clearly() -> None:
    model = _resnet()
    model.avgpool = torch.nn.AdaptiveAvgPool2d((3, 3))
    model.fc = torch.nn.Linear(512 * 9, len(FERPLUS_LABELS))
    # At 48x48 ResNet-18's last feature map is 2x2: 3x3 does not divide it.
    with pytest.raises(ModelError, match=r"'avgpool' \(AdaptiveAvgPool2d\) maps a 2x2 feature map to 3x3"):
        check_exportable(model, channels=3, height=48, width=48)
    # At 96x96 it is 3x3, which exports as a plain pooling.
    check_exportable(model, channels=3, height=96, width=96)


def test_verification_catches_a_model_that_differs_from_the_export(tmp_path: Path) -> None:
    crops = _face_crops(64, count=4)
    exported = _resnet(seed=2)
    export_and_verify(
        exported,
        tmp_path / "a.onnx",
        crops,
        height=64,
        width=64,
        labels=FERPLUS_LABELS,
        color="bgr",
        scale=1 / 255,
    )
    with pytest.raises(ModelError, match="disagree"):
        verify_export(_resnet(seed=3), tmp_path / "a.onnx", crops)
