"""The ``faces`` stage: YuNet face detection with five landmarks per face.

Writes a detection layer (``faces`` by default) with, per face:

- ``xyxy`` (float32 frame pixels), ``confidence`` (YuNet score), ``class_id`` 0;
- ``data["landmarks"]``: ``(n, 5, 2)`` float32 frame pixels, in YuNet's order: subject's
  right eye, left eye, nose tip, right mouth corner, left mouth corner (the subject's right
  eye is on the image's left in a frontal face);
- ``data["class_name"]``: ``"face"``;
- ``data["person_track_id"]`` (int64, -1 when none) when the stage is restricted to person
  boxes (``within_layer``): the ``tracker_id`` of the person box the face lies in.

YuNet runs through OpenCV's ``cv2.FaceDetectorYN`` (its decoding and NMS are OpenCV's own,
well tested). It is a 53k-parameter network, cheap on the CPU at camera resolutions, so GPU
frames are downloaded for it; ``input_max_side`` caps the resolution it sees.

YuNet's landmarks hardly follow head roll (measured on the astronaut portrait rotated by
±30°: the eye line it reports stays within ~5° of horizontal, the eye points 13-20 px off at
a 47 px inter-ocular distance). ``roll_search_deg`` fixes that for the ``align`` stage by
re-detecting each face on a few rotated views (eye error then below ~6 px up to ±45°).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

from engine.errors import ConfigError, ModelError
from engine.frame import Batch
from engine.locations import describe_lookup
from engine.stage import BaseStage, Context

logger = logging.getLogger(__name__)

#: Default layer the stage writes and the align/emotion stages read.
FACES_LAYER = "faces"

#: Side of the square views (pixels) in which ``roll_search_deg`` re-detects a face; the
#: face fills half of it, well inside YuNet's comfortable range.
_ROLL_VIEW_PX = 128

#: Names of the five landmarks, in the order of ``data["landmarks"][:, i]``.
LANDMARK_NAMES = ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")


class FaceDetector(BaseStage):
    """Detect faces and their five landmarks with YuNet (``cv2.FaceDetectorYN``)."""

    def __init__(
        self,
        *,
        model: Path,
        layer: str = FACES_LAYER,
        confidence: float = 0.6,
        nms_iou: float = 0.3,
        top_k: int = 5000,
        min_size_px: float = 0.0,
        input_max_side: int | None = None,
        within_layer: str | None = None,
        within_classes: list[str] | None = None,
        min_inside: float = 0.6,
        roll_search_deg: list[float] | None = None,
    ) -> None:
        """Configure the detector (cheap; the model is loaded in ``open``).

        Args:
            model: YuNet ONNX file (``face_detection_yunet_2023mar.onnx``).
            layer: Name of the layer to write.
            confidence: Minimum YuNet score, in (0, 1).
            nms_iou: IoU above which overlapping faces are suppressed, in (0, 1).
            top_k: Candidates kept before NMS.
            min_size_px: Faces whose box is narrower or shorter than this are dropped.
            input_max_side: When set, frames larger than this (longest side, pixels) are
                scaled down before detection; boxes are scaled back to frame pixels.
            within_layer: When set, keep only faces lying inside a box of this layer
                (typically ``objects`` after a person detector) and record that box's
                ``tracker_id`` in ``data["person_track_id"]``.
            within_classes: Class names of ``within_layer`` boxes that count (matched
                against ``data["class_name"]``); defaults to ``["person"]``.
            min_inside: Share of a face box's area that must lie inside the person box.
            roll_search_deg: Rotations (degrees, e.g. ``[-30, 30]``) of a small view of each
                face to re-detect it on, for rolled heads: YuNet's landmarks hardly follow
                roll, so each face keeps the landmarks of the view where it scored best.
                Costs one small detector pass per face and angle (plus one upright view).
        """
        if not 0.0 < confidence < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
        if not 0.0 < nms_iou < 1.0:
            raise ConfigError(f"nms_iou must be in (0, 1), got {nms_iou}")
        if top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k}")
        if min_size_px < 0:
            raise ConfigError(f"min_size_px must be >= 0, got {min_size_px}")
        if input_max_side is not None and input_max_side < 32:
            raise ConfigError(f"input_max_side must be at least 32 pixels, got {input_max_side}")
        if not 0.0 < min_inside <= 1.0:
            raise ConfigError(f"min_inside must be in (0, 1], got {min_inside}")
        if within_classes is not None and within_layer is None:
            raise ConfigError("within_classes needs within_layer (e.g. within_layer: objects)")
        self.model = Path(model)
        self.layer = layer
        self.confidence = float(confidence)
        self.nms_iou = float(nms_iou)
        self.top_k = int(top_k)
        self.min_size_px = float(min_size_px)
        self.input_max_side = input_max_side
        self.within_layer = within_layer
        self.within_classes = list(within_classes) if within_classes is not None else ["person"]
        self.min_inside = float(min_inside)
        if roll_search_deg is not None and any(not -90.0 <= angle <= 90.0 for angle in roll_search_deg):
            raise ConfigError(f"roll_search_deg angles must be in [-90, 90], got {roll_search_deg}")
        self.roll_search_deg = [float(angle) for angle in roll_search_deg or () if angle != 0]
        self._detectors: dict[tuple[int, int], Any] = {}
        self._frames = 0
        self._faces = 0

    def open(self, context: Context) -> None:
        """Load YuNet once (and fail early on a bad file)."""
        if not self.model.is_file():
            raise ModelError(f"YuNet model not found: {self.model} ({describe_lookup('models')})")
        self._detector_for((320, 320))

    def _detector_for(self, size: tuple[int, int]) -> Any:
        detector = self._detectors.get(size)
        if detector is None:
            try:
                detector = cv2.FaceDetectorYN.create(
                    str(self.model), "", size, self.confidence, self.nms_iou, self.top_k
                )
            except cv2.error as error:
                raise ModelError(f"cannot load YuNet model {self.model}: {error}") from error
            self._detectors[size] = detector
        return detector

    def detect(self, image: np.ndarray) -> sv.Detections:
        """Detect faces in one ``(H, W, 3)`` uint8 BGR image (frame pixels out)."""
        height, width = image.shape[:2]
        scale = 1.0
        if self.input_max_side is not None and max(height, width) > self.input_max_side:
            scale = self.input_max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        xyxy, landmarks, score = self._detect_rows(image)
        if self.roll_search_deg and len(score):
            landmarks = self._refine_roll(image, xyxy, landmarks)
        xyxy, landmarks = xyxy / np.float32(scale), landmarks / np.float32(scale)
        size_px = xyxy[:, 2:] - xyxy[:, :2]
        keep = (size_px >= self.min_size_px).all(axis=1)
        count = int(keep.sum())
        return sv.Detections(
            xyxy=xyxy[keep],
            confidence=score[keep],
            class_id=np.zeros(count, dtype=np.int64),
            data={"landmarks": landmarks[keep], "class_name": np.full(count, "face")},
        )

    def _detect_rows(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """YuNet on one image: ``xyxy (k,4)``, ``landmarks (k,5,2)``, ``score (k,)`` float32."""
        height, width = image.shape[:2]
        _, rows = self._detector_for((width, height)).detect(np.ascontiguousarray(image))
        rows = np.zeros((0, 15), dtype=np.float32) if rows is None else np.asarray(rows, dtype=np.float32)
        xyxy = np.concatenate([rows[:, 0:2], rows[:, 0:2] + rows[:, 2:4]], axis=1)
        return xyxy, rows[:, 4:14].reshape(-1, 5, 2), rows[:, 14].copy()

    def _refine_roll(self, image: np.ndarray, xyxy: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Re-detect each face on rotated views of it and keep the landmarks of its best view.

        YuNet's landmarks barely follow head roll (on a face rolled 30° it reports an eye
        line within about 5° of horizontal, the eyes 13-20 px off at a 47 px inter-ocular
        distance), so eye alignment alone cannot undo a roll. A view rotated by about the
        face's roll shows it upright, where YuNet scores it highest and places the landmarks
        right; they are mapped back to the image. Boxes and scores stay those of the plain
        pass. Each face and angle costs one detector pass on a small crop.
        """
        side_px = _ROLL_VIEW_PX
        angles = [0.0, *self.roll_search_deg]
        refined = landmarks.copy()
        centres = (xyxy[:, :2] + xyxy[:, 2:]) / 2.0
        scales = 0.5 * side_px / np.maximum(np.max(xyxy[:, 2:] - xyxy[:, :2], axis=1), 1.0)
        # One small detector pass per face and angle: YuNet has no batched form in OpenCV.
        for face, (centre, scale) in enumerate(zip(centres.tolist(), scales.tolist(), strict=True)):
            centre_x, centre_y = centre
            best_score, best_points = -1.0, None
            for angle_deg in angles:
                matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle_deg, scale)
                matrix[:, 2] += (side_px / 2.0 - centre_x, side_px / 2.0 - centre_y)
                view = cv2.warpAffine(image, matrix, (side_px, side_px), borderMode=cv2.BORDER_REPLICATE)
                boxes, points, scores = self._detect_rows(view)
                if len(scores) == 0:
                    continue
                offset = np.hypot(*((boxes[:, :2] + boxes[:, 2:]) / 2.0 - side_px / 2.0).T)
                nearest = int(np.argmin(offset))
                if offset[nearest] < side_px / 4.0 and scores[nearest] > best_score:
                    inverse = cv2.invertAffineTransform(matrix)
                    best_score = float(scores[nearest])
                    # Upright wins: keep the full-resolution landmarks of the plain pass.
                    best_points = (
                        None if angle_deg == 0 else points[nearest] @ inverse[:, :2].T + inverse[:, 2]
                    )
            if best_points is not None:
                refined[face] = best_points
        return refined

    def __call__(self, batch: Batch) -> Batch:
        for frame in batch:
            faces = self.detect(_as_numpy_bgr(frame.image))
            if self.within_layer is not None:
                faces = self._restrict_to_people(faces, frame.layer(self.within_layer))
            frame.layers[self.layer] = faces
            self._frames += 1
            self._faces += len(faces)
        return batch

    def _restrict_to_people(self, faces: sv.Detections, people: sv.Detections) -> sv.Detections:
        if len(people) > 0 and "class_name" in people.data:
            people = _select(people, np.isin(np.asarray(people.data["class_name"]), self.within_classes))
        if len(faces) == 0 or len(people) == 0:
            faces = _select(faces, np.zeros(len(faces), dtype=bool))
            faces.data["person_track_id"] = np.zeros(0, dtype=np.int64)
            return faces
        inside = _inside_share(faces.xyxy, people.xyxy)  # (faces, people)
        # Several people can contain a face (a crowd): the smallest one is the closest fit.
        person_area = np.prod(people.xyxy[:, 2:] - people.xyxy[:, :2], axis=1)
        candidates = np.where(inside >= self.min_inside, person_area[None, :], np.inf)
        best = np.argmin(candidates, axis=1)
        keep = np.isfinite(candidates[np.arange(len(faces)), best])
        track_ids = (
            np.asarray(people.tracker_id, dtype=np.int64)
            if people.tracker_id is not None
            else np.full(len(people), -1, dtype=np.int64)
        )
        faces = _select(faces, keep)
        faces.data["person_track_id"] = track_ids[best[keep]]
        return faces

    def summary(self) -> dict[str, Any]:
        """Frames seen and faces found (for ``summary.json``)."""
        return {"frames": self._frames, "faces": self._faces}

    def close(self) -> None:
        """Drop the OpenCV detectors."""
        self._detectors.clear()


def _select(detections: sv.Detections, rows: np.ndarray) -> sv.Detections:
    """``detections[rows]`` typed as Detections (supervision's ``__getitem__`` is a union)."""
    selected = detections[rows]
    if not isinstance(selected, sv.Detections):  # pragma: no cover - array indices give Detections
        raise TypeError(f"expected Detections from row selection, got {type(selected).__name__}")
    return selected


def _inside_share(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """Share of each inner box's area inside each outer box: ``(len(inner), len(outer))``."""
    top_left = np.maximum(inner[:, None, :2], outer[None, :, :2])
    bottom_right = np.minimum(inner[:, None, 2:], outer[None, :, 2:])
    overlap = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = np.prod(np.clip(inner[:, 2:] - inner[:, :2], 1e-6, None), axis=1)
    return overlap / area[:, None]  # type: ignore[no-any-return]


def _empty_faces() -> sv.Detections:
    return sv.Detections(
        xyxy=np.zeros((0, 4), dtype=np.float32),
        confidence=np.zeros(0, dtype=np.float32),
        class_id=np.zeros(0, dtype=np.int64),
        data={"landmarks": np.zeros((0, 5, 2), dtype=np.float32), "class_name": np.zeros(0, dtype="<U4")},
    )


def _as_numpy_bgr(image: Any) -> np.ndarray:
    """Return an ``(H, W, 3)`` uint8 BGR numpy view of a CPU frame, or a copy of a GPU frame."""
    if isinstance(image, np.ndarray):
        return image
    return image.permute(1, 2, 0).contiguous().cpu().numpy()  # type: ignore[no-any-return]


__all__ = ["FACES_LAYER", "LANDMARK_NAMES", "FaceDetector"]
