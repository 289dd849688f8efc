"""Draws face landmarks (eye points first of all) on the canvas; boxes and labels are ``annotate``'s.

Use it after ``annotate`` in a face pipeline (by dotted path, it is not an entry point)::

    - stage: plugins.face_draw:FaceLandmarkDrawer
      layer: faces

Eyes are drawn as filled dots (subject's right eye in one colour, left eye in another, so a
swapped-eye bug is visible at a glance); nose and mouth corners, when ``all_points`` is set,
as small rings. Faces the align stage rejected (``align_ok`` False) get grey eye points.
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from engine.errors import ConfigError
from engine.frame import Batch
from engine.stage import BaseStage

#: BGR colours: subject's right eye, left eye, other landmarks, faces not aligned.
RIGHT_EYE_BGR = (0, 255, 255)
LEFT_EYE_BGR = (255, 0, 255)
OTHER_BGR = (255, 255, 0)
REJECTED_BGR = (160, 160, 160)


class FaceLandmarkDrawer(BaseStage):
    """Paints the five YuNet landmarks of a face layer on each frame's canvas."""

    draws: ClassVar[bool] = True

    def __init__(
        self, *, layer: str = "faces", all_points: bool = True, radius_px: int | None = None
    ) -> None:
        """Configure the drawer.

        Args:
            layer: Face layer with ``data["landmarks"]``.
            all_points: Also draw nose and mouth corners (eyes are always drawn).
            radius_px: Dot radius; None scales with the face size (inter-ocular distance / 10,
                at least 1 pixel).
        """
        if radius_px is not None and radius_px < 1:
            raise ConfigError(f"radius_px must be >= 1 or null, got {radius_px}")
        self.layer = layer
        self.all_points = all_points
        self.radius_px = radius_px

    def __call__(self, batch: Batch) -> Batch:
        for frame in batch:
            faces = frame.layer(self.layer)
            if len(faces) == 0 or "landmarks" not in faces.data:
                continue
            canvas = frame.draw_target()
            landmarks = np.asarray(faces.data["landmarks"], dtype=np.float64)
            ok = np.asarray(faces.data.get("align_ok", np.ones(len(faces), dtype=bool)), dtype=bool)
            eye_distance = np.hypot(*(landmarks[:, 1] - landmarks[:, 0]).T)
            radii = (
                np.full(len(faces), self.radius_px)
                if self.radius_px is not None
                else np.clip(np.nan_to_num(eye_distance / 10.0, nan=1.0), 1, None)
            )
            points = np.round(np.nan_to_num(landmarks, nan=-1.0)).astype(np.int32)
            # Drawing is inherently per point; there are at most a few faces per frame.
            for face_points, radius, aligned in zip(points, radii.tolist(), ok.tolist(), strict=True):
                radius = int(round(radius))
                right, left = (RIGHT_EYE_BGR, LEFT_EYE_BGR) if aligned else (REJECTED_BGR, REJECTED_BGR)
                cv2.circle(canvas, tuple(face_points[0].tolist()), radius, right, -1, cv2.LINE_AA)
                cv2.circle(canvas, tuple(face_points[1].tolist()), radius, left, -1, cv2.LINE_AA)
                if self.all_points:
                    for point in face_points[2:5]:
                        cv2.circle(canvas, tuple(point.tolist()), radius, OTHER_BGR, 1, cv2.LINE_AA)
        return batch
