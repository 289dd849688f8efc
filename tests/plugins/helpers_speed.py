"""Factories for the speed tests: a top-down calibration and frames of tracked boxes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import supervision as sv

from engine.frame import Frame, SourceInfo
from engine.geometry.calibration import Calibration
from engine.stage import Context

WIDTH, HEIGHT = 400, 480
PX_PER_M = 20.0
# Image (100, 440) is world (0, 0); x grows to the right, world y grows up the image.
ORIGIN_PX = (100.0, 440.0)
BOX_W, BOX_H = 40.0, 30.0


def write_top_down_calibration(path: Path, *, mask: list[list[float]] | None = None) -> Path:
    """A 10 m x 20 m rectangle seen from straight above at 20 px/m (an affine homography)."""
    x0, y0 = ORIGIN_PX
    size_x, size_y = 10 * PX_PER_M, 20 * PX_PER_M
    Calibration(
        camera="top_down",
        image_width=WIDTH,
        image_height=HEIGHT,
        image_points=[[x0, y0], [x0 + size_x, y0], [x0 + size_x, y0 - size_y], [x0, y0 - size_y]],
        width_m=10.0,
        length_m=20.0,
        mask=mask,
    ).save(path)
    return path


def world_to_pixel(xy_m: np.ndarray) -> np.ndarray:
    """Image point of a world point under the top-down calibration."""
    xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([ORIGIN_PX[0] + xy[:, 0] * PX_PER_M, ORIGIN_PX[1] - xy[:, 1] * PX_PER_M])


def boxes_at(xy_m: np.ndarray) -> np.ndarray:
    """Boxes whose bottom-centre stands on the given world points."""
    pixels = world_to_pixel(xy_m)
    return np.column_stack(
        [pixels[:, 0] - BOX_W / 2, pixels[:, 1] - BOX_H, pixels[:, 0] + BOX_W / 2, pixels[:, 1]]
    )


def tracked_frame(
    index: int,
    pts_ns: int,
    track_ids: Sequence[int],
    xy_m: np.ndarray,
    *,
    source_id: str = "cam",
    image: np.ndarray | None = None,
) -> Frame:
    """A frame whose objects layer holds tracked boxes standing on the given world points."""
    image = image if image is not None else np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
    frame = Frame(source_id=source_id, index=index, pts_ns=pts_ns, image=image)
    frame.layers["objects"] = sv.Detections(
        xyxy=boxes_at(xy).astype(np.float32) if len(xy) else np.zeros((0, 4), dtype=np.float32),
        confidence=np.full(len(xy), 0.9, dtype=np.float32),
        class_id=np.full(len(xy), 2, dtype=int),
        tracker_id=np.asarray(track_ids, dtype=int),
        data={"class_name": np.full(len(xy), "car")},
    )
    return frame


def context(*source_ids: str, width: int = WIDTH, height: int = HEIGHT, fps: float = 30.0) -> Context:
    """A context whose sources have the calibration's frame size."""
    return Context(
        sources={
            source_id: SourceInfo(source_id, "memory://", width, height, fps, False, None)
            for source_id in source_ids
        }
    )
