"""FaceAligner: horizontal eyes, rotation invariance, skipped implausible faces, both backends."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import supervision as sv

from engine.errors import ConfigError, StageError
from engine.frame import Batch, Frame
from engine.ops.warp import transform_points
from engine.registry import resolve_stage
from engine.stage import Context
from plugins.align import FaceAligner, plausible_faces
from plugins.faces import FaceDetector
from tests.conftest import shared_path
from tests.plugins.helpers_faces import YUNET, astronaut, rotate_about

FACE_CENTRE = (223.0, 120.0)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    stage = FaceDetector(model=shared_path(YUNET), roll_search_deg=[-30.0, 30.0])
    stage.open(Context())
    return stage


@pytest.fixture(scope="module")
def upright_faces(detector: FaceDetector) -> sv.Detections:
    return detector.detect(astronaut())


def _faces(xyxy: np.ndarray, landmarks: np.ndarray) -> sv.Detections:
    count = len(xyxy)
    return sv.Detections(
        xyxy=np.asarray(xyxy, dtype=np.float32).reshape(-1, 4),
        confidence=np.full(count, 0.9, dtype=np.float32),
        class_id=np.zeros(count, dtype=np.int64),
        data={"landmarks": np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)},
    )


def _align(stage: FaceAligner, *pairs: tuple[np.ndarray, sv.Detections]) -> list[sv.Detections]:
    frames = []
    for index, (image, faces) in enumerate(pairs):
        frame = Frame(source_id="cam", index=index, pts_ns=index, image=image)
        frame.layers["faces"] = copy.deepcopy(faces)  # the stage adds columns in place
        frames.append(frame)
    return [frame.layers["faces"] for frame in stage(Batch.of(frames))]


def _gray(crop: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (0, 0), 1.5).astype(np.float64)


def _roll_deg(faces: sv.Detections) -> float:
    """The rotation the alignment applied to the first face (counter-clockwise positive)."""
    matrix = faces.data["align_matrix"][0]
    return float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_gray(a).ravel(), _gray(b).ravel())[0, 1])


@pytest.mark.parametrize("angle_deg", [30.0, -30.0])
def test_aligned_crop_of_a_rotated_face_matches_the_upright_one(
    upright_faces: sv.Detections, angle_deg: float
) -> None:
    """With the landmarks rotated along with the image, alignment undoes the rotation."""
    image = astronaut()
    rotated, matrix = rotate_about(image, FACE_CENTRE, angle_deg)
    moved = upright_faces.data["landmarks"] @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2]
    stage = FaceAligner()
    upright, turned = _align(stage, (image, upright_faces), (rotated, _faces(upright_faces.xyxy, moved)))
    assert upright.data["align_ok"].all() and turned.data["align_ok"].all()
    reference, crop = upright.data["aligned_crop"][0], turned.data["aligned_crop"][0]
    assert np.abs(crop.astype(int) - reference.astype(int)).mean() < 4.0
    assert _correlation(crop, reference) > 0.98
    # Eyes horizontal at the template positions, whatever the input roll.
    eyes_in_crop = transform_points(turned.data["align_matrix"], turned.data["landmarks"][:, :2])[0]
    np.testing.assert_allclose(eyes_in_crop, stage.template.eye_points_px(), atol=1e-3)
    assert _roll_deg(turned) - _roll_deg(upright) == pytest.approx(angle_deg, abs=0.01)


@pytest.mark.parametrize("angle_deg", [30.0, -30.0])
def test_end_to_end_with_yunet_landmarks_undoes_a_30_degree_roll(
    detector: FaceDetector, upright_faces: sv.Detections, angle_deg: float
) -> None:
    image = astronaut()
    rotated, _ = rotate_about(image, FACE_CENTRE, angle_deg)
    found = detector.detect(rotated)
    found = found[[int(np.argmax(found.confidence))]]
    eyes = FaceAligner()
    boxes = FaceAligner(method="box")
    upright, turned = _align(eyes, (image, upright_faces), (rotated, found))
    upright_box, turned_box = _align(boxes, (image, upright_faces), (rotated, found))
    assert _roll_deg(turned) - _roll_deg(upright) == pytest.approx(angle_deg, abs=6.0)
    aligned = _correlation(turned.data["aligned_crop"][0], upright.data["aligned_crop"][0])
    unaligned = _correlation(turned_box.data["aligned_crop"][0], upright_box.data["aligned_crop"][0])
    assert aligned > 0.7 and aligned > unaligned + 0.3


def test_implausible_faces_are_marked_and_skipped_not_crashed_on() -> None:
    good = [[200, 102], [247, 103], [220, 125], [199, 143], [240, 144]]
    swapped = [[247, 103], [200, 102], [220, 125], [199, 143], [240, 144]]
    tiny = [[10, 10], [12, 10], [11, 11], [10, 12], [12, 12]]
    nan = [[np.nan, 102], [247, 103], [220, 125], [199, 143], [240, 144]]
    outside = [[20, 20], [60, 20], [220, 125], [199, 143], [240, 144]]
    face_box = [178, 63, 268, 176]
    faces = _faces(
        np.array([face_box, face_box, [8, 8, 14, 14], face_box, face_box]),
        np.array([good, swapped, tiny, nan, outside]),
    )
    (result,) = _align(FaceAligner(), (astronaut(), faces))
    assert result.data["align_ok"].tolist() == [True, False, False, False, False]
    assert result.data["aligned_crop"].shape == (5, 64, 64, 3)
    assert result.data["aligned_crop"][1:].max() == 0  # skipped faces get black crops
    assert np.isnan(result.data["align_matrix"][1:]).all()
    assert FaceAligner().summary() == {"aligned": 0, "skipped": 0}


def test_plausibility_rules_in_isolation() -> None:
    box = np.array([[0.0, 0.0, 100.0, 100.0]] * 3)
    landmarks = np.zeros((3, 5, 2))
    landmarks[:, 0] = [[30, 40], [30, 40], [30, 40]]
    landmarks[:, 1] = [[70, 40], [60, 90], [35, 40]]  # level; rolled 59 deg; 5 px apart
    ok = plausible_faces(box, landmarks, min_eye_distance_px=6.0, max_roll_deg=45.0)
    assert ok.tolist() == [True, False, False]


def test_a_batch_of_frames_of_different_sizes_and_empty_layers(upright_faces: sv.Detections) -> None:
    image = astronaut()
    small = cv2.resize(image, (256, 256))
    half = _faces(upright_faces.xyxy / 2, upright_faces.data["landmarks"] / 2)
    empty = _faces(np.zeros((0, 4)), np.zeros((0, 5, 2)))
    big, small_faces, none = _align(
        FaceAligner(size=(48, 40)), (image, upright_faces), (small, half), (image, empty)
    )
    assert big.data["aligned_crop"].shape == (1, 40, 48, 3)
    assert none.data["aligned_crop"].shape == (0, 40, 48, 3) and none.data["align_ok"].shape == (0,)
    assert _correlation(big.data["aligned_crop"][0], small_faces.data["aligned_crop"][0]) > 0.95


def test_box_method_needs_no_landmarks_and_eyes_method_says_what_is_missing() -> None:
    faces = sv.Detections(xyxy=np.array([[178.0, 63, 268, 176]]), class_id=np.array([0]))
    (result,) = _align(FaceAligner(method="box"), (astronaut(), faces))
    assert result.data["align_ok"].tolist() == [True]
    with pytest.raises(StageError, match="landmarks"):
        _align(FaceAligner(), (astronaut(), faces))


def test_kornia_and_opencv_stage_backends_agree(upright_faces: sv.Detections) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("kornia")
    image = astronaut()
    rotated, matrix = rotate_about(image, FACE_CENTRE, 25.0)
    moved = upright_faces.data["landmarks"] @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2]
    pairs = ((image, upright_faces), (rotated, _faces(upright_faces.xyxy, moved)))
    cpu = _align(FaceAligner(backend="opencv", margin=0.2), *pairs)
    kornia = _align(FaceAligner(backend="torch", margin=0.2), *pairs)
    for a, b in zip(cpu, kornia, strict=True):
        assert np.abs(a.data["aligned_crop"].astype(int) - b.data["aligned_crop"].astype(int)).max() <= 2
    # Tensor frames (3xHxW, as GPU sources deliver them) take the kornia path by themselves.
    tensor_pairs = [(torch.from_numpy(img).permute(2, 0, 1), faces) for img, faces in pairs]
    auto = _align(FaceAligner(margin=0.2), *tensor_pairs)
    for a, b in zip(cpu, auto, strict=True):
        assert np.abs(a.data["aligned_crop"].astype(int) - b.data["aligned_crop"].astype(int)).max() <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (1, 64)}, "size"),
        ({"max_roll_deg": 0.0}, "max_roll_deg"),
        ({"method": "affine"}, "method"),
        ({"backend": "cuda"}, "backend"),
        ({"right_eye": (0.8, 0.3)}, "right_eye"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FaceAligner(**kwargs)  # type: ignore[arg-type]


def test_registered_under_its_entry_point_name() -> None:
    assert resolve_stage("align") is FaceAligner
