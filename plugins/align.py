"""The ``align`` stage: eye-based similarity alignment of every face of a batch at once.

Reads a face layer written by the ``faces`` stage (boxes + ``data["landmarks"]``) and adds,
per face, in ``Detections.data`` (so the columns follow the detections through boolean
indexing, tracking and merging like any other column):

- ``aligned_crop``: ``(n, h, w, 3)`` uint8 BGR crops, one per face, the eyes horizontal at
  the template's positions. Rows of faces that were not aligned are black. This is a plain
  numpy array on the CPU even on GPU runs: crops are small (12 KiB for 64×64) while the
  frames they come from stay on the device; the ``emotion`` stage consumes them and drops
  the column by default, so sinks never write pixels.
- ``align_ok``: ``(n,)`` bool, False for faces that were too small or whose landmarks are
  implausible (non-finite, eyes outside the box, eyes too close or too far apart for the
  box, head rolled beyond ``max_roll_deg``, eyes swapped). They are skipped, never crashed on.
- ``align_matrix``: ``(n, 2, 3)`` float32 frame→crop affine matrices (NaN where not ok).

The warp runs on the CPU with OpenCV for numpy frames and on the frames' torch device with
kornia for tensor frames (``backend: auto``); both give the same crops.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import supervision as sv

from engine.errors import ConfigError, StageError
from engine.frame import Batch
from engine.ops.warp import (
    Border,
    FaceTemplate,
    box_transforms,
    similarity_from_eyes,
    warp_crops_cv2,
    warp_crops_torch,
)
from engine.stage import BaseStage, Context

logger = logging.getLogger(__name__)

#: ``Detections.data`` keys written by the stage.
CROP_KEY = "aligned_crop"
OK_KEY = "align_ok"
MATRIX_KEY = "align_matrix"


def plausible_faces(
    xyxy: np.ndarray,
    landmarks: np.ndarray,
    *,
    min_eye_distance_px: float,
    max_roll_deg: float,
    eye_to_width: tuple[float, float] = (0.2, 0.9),
    box_slack: float = 0.2,
) -> np.ndarray:
    """Return an ``(n,)`` bool mask of faces whose eye landmarks can be aligned on.

    Args:
        xyxy: ``(n, 4)`` face boxes in frame pixels.
        landmarks: ``(n, k >= 2, 2)`` landmarks; the first two are the right and left eye.
        min_eye_distance_px: Smallest inter-ocular distance that still gives a useful crop.
        max_roll_deg: Largest head roll (eye line vs horizontal) accepted, in degrees; a
            face whose eyes are swapped has a roll near 180° and fails.
        eye_to_width: Accepted range of inter-ocular distance over box width.
        box_slack: Eyes may lie this fraction of the box size outside the box.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    eyes = np.asarray(landmarks, dtype=np.float64)[:, :2, :]
    vector = eyes[:, 1] - eyes[:, 0]
    distance = np.hypot(vector[:, 0], vector[:, 1])
    roll_deg = np.degrees(np.abs(np.arctan2(vector[:, 1], vector[:, 0])))
    box_size = xyxy[:, 2:] - xyxy[:, :2]
    low = xyxy[:, None, :2] - box_slack * box_size[:, None, :]
    high = xyxy[:, None, 2:] + box_slack * box_size[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = distance / box_size[:, 0]
        ok = (
            np.isfinite(eyes).all(axis=(1, 2))
            & np.isfinite(xyxy).all(axis=1)
            & (distance >= min_eye_distance_px)
            & (roll_deg <= max_roll_deg)
            & (ratio >= eye_to_width[0])
            & (ratio <= eye_to_width[1])
            & ((eyes >= low) & (eyes <= high)).all(axis=(1, 2))
        )
    return ok  # type: ignore[no-any-return]


class FaceAligner(BaseStage):
    """Cut an eye-aligned crop of every face of a batch (OpenCV on CPU, kornia on torch)."""

    def __init__(
        self,
        *,
        layer: str = "faces",
        size: tuple[int, int] = (64, 64),
        right_eye: tuple[float, float] = (0.3, 0.34),
        left_eye: tuple[float, float] = (0.7, 0.34),
        margin: float = 0.0,
        method: Literal["eyes", "box"] = "eyes",
        border: Border = "replicate",
        min_eye_distance_px: float = 6.0,
        max_roll_deg: float = 60.0,
        backend: Literal["auto", "opencv", "torch"] = "auto",
    ) -> None:
        """Configure the aligner.

        Args:
            layer: Face layer to read and annotate.
            size: ``(width, height)`` of the crops; match the classifier's input.
            right_eye: ``(x, y)`` of the subject's right eye in a tight crop, as fractions.
            left_eye: ``(x, y)`` of the subject's left eye in a tight crop, as fractions.
            margin: Extra border on each side, as a fraction of the tight crop.
            method: ``eyes`` (similarity from the eye centres) or ``box`` (an axis-aligned
                square around the detector box, no rotation: the unaligned baseline).
            border: ``replicate`` the edge pixels or fill with black (``constant``).
            min_eye_distance_px: Faces with a smaller inter-ocular distance are not aligned.
            max_roll_deg: Faces rolled more than this are not aligned.
            backend: ``opencv``, ``torch`` (kornia), or ``auto``: kornia for torch frames,
                OpenCV for numpy frames.
        """
        if len(size) != 2 or min(size) < 2:
            raise ConfigError(f"size must be [width, height] of at least 2 pixels, got {list(size)}")
        if min_eye_distance_px < 0:
            raise ConfigError(f"min_eye_distance_px must be >= 0, got {min_eye_distance_px}")
        if not 0.0 < max_roll_deg <= 180.0:
            raise ConfigError(f"max_roll_deg must be in (0, 180], got {max_roll_deg}")
        if method not in ("eyes", "box"):
            raise ConfigError(f"method must be 'eyes' or 'box', got {method!r}")
        if border not in ("replicate", "constant"):
            raise ConfigError(f"border must be 'replicate' or 'constant', got {border!r}")
        if backend not in ("auto", "opencv", "torch"):
            raise ConfigError(f"backend must be 'auto', 'opencv' or 'torch', got {backend!r}")
        self.layer = layer
        self.template = FaceTemplate(
            width=int(size[0]),
            height=int(size[1]),
            right_eye=(float(right_eye[0]), float(right_eye[1])),
            left_eye=(float(left_eye[0]), float(left_eye[1])),
            margin=float(margin),
        )
        self.method = method
        self.border: Border = border
        self.min_eye_distance_px = float(min_eye_distance_px)
        self.max_roll_deg = float(max_roll_deg)
        self.backend = backend
        self._aligned = 0
        self._rejected = 0

    def open(self, context: Context) -> None:
        """Check that kornia is importable when the torch path was asked for."""
        if self.backend == "torch":
            try:
                import kornia  # noqa: F401
            except ImportError as error:
                raise ConfigError("align backend 'torch' needs kornia: pip install kornia") from error

    def transforms(self, faces: sv.Detections) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(matrices (n,2,3) float64, ok (n,) bool)`` for the faces of one frame."""
        if len(faces) == 0:
            return np.zeros((0, 2, 3)), np.zeros(0, dtype=bool)
        if self.method == "box":
            matrices = box_transforms(faces.xyxy, self.template)
            size = faces.xyxy[:, 2:] - faces.xyxy[:, :2]
            ok = np.isfinite(matrices).all(axis=(1, 2)) & (size.min(axis=1) >= self.min_eye_distance_px)
            return matrices, ok
        landmarks = faces.data.get("landmarks")
        if landmarks is None:
            raise StageError(
                f"layer '{self.layer}' has no data['landmarks']: run the faces stage before align "
                "(or use method: box)"
            )
        landmarks = np.asarray(landmarks)
        ok = plausible_faces(
            faces.xyxy,
            landmarks,
            min_eye_distance_px=self.min_eye_distance_px,
            max_roll_deg=self.max_roll_deg,
        )
        matrices = similarity_from_eyes(landmarks[:, :2, :], self.template)
        return matrices, ok & np.isfinite(matrices).all(axis=(1, 2))

    def __call__(self, batch: Batch) -> Batch:
        per_frame: list[tuple[sv.Detections, np.ndarray, np.ndarray]] = []
        for frame in batch:
            faces = frame.layers.get(self.layer)
            if faces is None:
                continue
            matrices, ok = self.transforms(faces)
            per_frame.append((faces, matrices, ok))
        if not per_frame:
            return batch
        # Gather every aligned face of the batch, warp them in one go, scatter back.
        images = [frame.image for frame in batch if frame.layers.get(self.layer) is not None]
        image_index = np.concatenate(
            [np.full(int(ok.sum()), position) for position, (_, _, ok) in enumerate(per_frame)]
        ).astype(np.int64)
        matrices_ok = np.concatenate([m[ok] for _, m, ok in per_frame]).reshape(-1, 2, 3)
        crops_ok = self._warp(images, image_index, matrices_ok)
        width, height = self.template.size
        start = 0
        for faces, matrices, ok in per_frame:
            crops = np.zeros((len(faces), height, width, 3), dtype=np.uint8)
            crops[ok] = crops_ok[start : start + int(ok.sum())]
            start += int(ok.sum())
            matrices = matrices.astype(np.float32)
            matrices[~ok] = np.nan
            faces.data[CROP_KEY] = crops
            faces.data[OK_KEY] = ok
            faces.data[MATRIX_KEY] = matrices
            self._aligned += int(ok.sum())
            self._rejected += int((~ok).sum())
        return batch

    def _warp(self, images: list[Any], image_index: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        width, height = self.template.size
        if len(matrices) == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8)
        on_torch = not isinstance(images[0], np.ndarray)
        if self.backend == "torch" or (self.backend == "auto" and on_torch):
            crops = warp_crops_torch(images, image_index, matrices, self.template.size, border=self.border)
            return crops.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # type: ignore[no-any-return]
        if on_torch:
            images = [image.permute(1, 2, 0).contiguous().cpu().numpy() for image in images]
        return warp_crops_cv2(images, image_index, matrices, self.template.size, border=self.border)

    def summary(self) -> dict[str, Any]:
        """Faces aligned and faces skipped as implausible (for ``summary.json``)."""
        return {"aligned": self._aligned, "skipped": self._rejected}
