"""FaceDetector: YuNet boxes and landmarks in frame pixels, person restriction and linking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from engine.errors import ConfigError, ModelError
from engine.frame import Batch, Frame
from engine.registry import resolve_stage
from engine.stage import Context
from plugins.faces import FaceDetector
from tests.conftest import shared_path
from tests.plugins.helpers_faces import ASTRONAUT_EYES, YUNET, astronaut, rotate_about


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    stage = FaceDetector(model=shared_path(YUNET))
    stage.open(Context())
    return stage


def _run(stage: FaceDetector, *images: np.ndarray, people: sv.Detections | None = None) -> list[Frame]:
    frames = [Frame(source_id="cam", index=i, pts_ns=i, image=image) for i, image in enumerate(images)]
    if people is not None:
        for frame in frames:
            frame.layers["objects"] = people
    return list(stage(Batch.of(frames)))


def test_landmarks_on_the_astronaut_are_at_her_eyes(detector: FaceDetector) -> None:
    faces = _run(detector, astronaut())[0].layers["faces"]
    assert len(faces) == 1
    landmarks = faces.data["landmarks"]
    assert landmarks.shape == (1, 5, 2) and landmarks.dtype == np.float32
    # Subject's right eye first (image left), then the left eye.
    np.testing.assert_allclose(landmarks[0, :2], ASTRONAUT_EYES, atol=3.0)
    x1, y1, x2, y2 = faces.xyxy[0]
    assert (landmarks[0, :, 0] > x1).all() and (landmarks[0, :, 0] < x2).all()
    assert (landmarks[0, :, 1] > y1).all() and (landmarks[0, :, 1] < y2).all()
    nose, right_mouth, left_mouth = landmarks[0, 2:]
    assert nose[1] > ASTRONAUT_EYES[:, 1].max() and right_mouth[1] > nose[1]
    assert right_mouth[0] < left_mouth[0]
    assert faces.confidence[0] > 0.8 and faces.class_id[0] == 0
    assert faces.data["class_name"].tolist() == ["face"]


def test_downscaled_detection_reports_frame_pixels(detector: FaceDetector) -> None:
    small = FaceDetector(model=detector.model, input_max_side=256)
    small.open(Context())
    faces = _run(small, astronaut())[0].layers["faces"]
    assert len(faces) == 1
    np.testing.assert_allclose(faces.data["landmarks"][0, :2], ASTRONAUT_EYES, atol=6.0)
    assert 0.8 < faces.confidence[0] <= 1.0  # the score column is not rescaled


def test_a_frame_without_faces_gets_an_empty_layer_with_all_columns(detector: FaceDetector) -> None:
    frames = _run(detector, np.full((120, 160, 3), 90, dtype=np.uint8), astronaut())
    empty = frames[0].layers["faces"]
    assert len(empty) == 0 and empty.data["landmarks"].shape == (0, 5, 2)
    assert len(frames[1].layers["faces"]) == 1
    assert detector.summary()["faces"] >= 1


def test_faces_are_kept_inside_people_and_linked_to_their_track(detector: FaceDetector) -> None:
    stage = FaceDetector(model=detector.model, within_layer="objects")
    stage.open(Context())
    people = sv.Detections(
        xyxy=np.array(
            [[300.0, 0, 500, 500], [150, 40, 320, 512], [100, 0, 512, 512], [140, 50, 300, 200]],
            dtype=np.float32,
        ),
        confidence=np.full(4, 0.9, dtype=np.float32),
        class_id=np.array([0, 0, 0, 1]),
        tracker_id=np.array([3, 7, 9, 11]),
        data={"class_name": np.array(["person", "person", "person", "dog"])},
    )
    faces = _run(stage, astronaut(), people=people)[0].layers["faces"]
    # Inside person 7 and person 9: the tighter one (7) wins; the dog's box does not count.
    assert len(faces) == 1 and faces.data["person_track_id"].tolist() == [7]
    elsewhere = people[np.array([True, False, False, True])]
    assert len(_run(stage, astronaut(), people=elsewhere)[0].layers["faces"]) == 0
    untracked = sv.Detections(
        xyxy=people.xyxy[1:2], class_id=np.array([0]), data={"class_name": np.array(["person"])}
    )
    linked = _run(stage, astronaut(), people=untracked)[0].layers["faces"]
    assert linked.data["person_track_id"].tolist() == [-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 1.5}, "confidence"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"input_max_side": 8}, "input_max_side"),
        ({"within_classes": ["person"]}, "within_layer"),
        ({"min_inside": 0.0}, "min_inside"),
        ({"roll_search_deg": [120.0]}, "roll_search_deg"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FaceDetector(model=Path("yunet.onnx"), **kwargs)  # type: ignore[arg-type]


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        FaceDetector(model=tmp_path / "missing.onnx").open(Context())


def test_registered_under_its_entry_point_name() -> None:
    assert resolve_stage("faces") is FaceDetector


@pytest.mark.parametrize("angle_deg", [30.0, -30.0])
def test_roll_search_puts_the_eyes_of_a_rolled_face_on_its_eyes(
    detector: FaceDetector, angle_deg: float
) -> None:
    searching = FaceDetector(model=detector.model, roll_search_deg=[-30.0, 30.0])
    searching.open(Context())
    rotated, matrix = rotate_about(astronaut(), (223.0, 120.0), angle_deg)
    truth = ASTRONAUT_EYES @ matrix[:, :2].T + matrix[:, 2]
    faces = searching.detect(rotated)
    best = faces[[int(np.argmax(faces.confidence))]]
    error_px = np.linalg.norm(best.data["landmarks"][0, :2] - truth, axis=1).max()
    assert error_px < 8.0  # inter-ocular distance is 47 px; without the search YuNet is 13-20 px off
    # The upright pass keeps its own, full-resolution landmarks.
    upright = searching.detect(astronaut())
    np.testing.assert_allclose(upright.data["landmarks"][0, :2], ASTRONAUT_EYES, atol=3.0)
