"""Frames with known detections and pictures, for the sink tests."""

from __future__ import annotations

import numpy as np
import supervision as sv

from engine.frame import Frame, SourceInfo


def source_info(
    source_id: str = "cam", *, fps: float | None = 25.0, width: int = 64, height: int = 48
) -> SourceInfo:
    """SourceInfo of a synthetic file source."""
    return SourceInfo(
        source_id=source_id, uri="synthetic://", width=width, height=height, fps=fps, live=False
    )


def level(index: int) -> int:
    """The grey level of picture ``index``: distinct, far apart, so decoded order is checkable."""
    return (index * 37) % 200 + 20


def picture_frame(
    index: int, *, source_id: str = "cam", width: int = 64, height: int = 48, fps: float = 25.0
) -> Frame:
    """A frame of one flat grey level (see :func:`level`)."""
    image = np.full((height, width, 3), level(index), dtype=np.uint8)
    return Frame(source_id=source_id, index=index, pts_ns=int(index * 1e9 / fps), image=image)


def tracked_detections() -> sv.Detections:
    """Three detections: two tracked, one without an id, with every kind of extra."""
    return sv.Detections(
        xyxy=np.array(
            [[10.04, 20.26, 50.0, 60.0], [100.0, 5.0, 130.5, 45.55], [0.0, 0.0, 8.0, 8.0]], dtype=np.float32
        ),
        confidence=np.array([0.912345, 0.5, 0.05], dtype=np.float32),
        class_id=np.array([2, 0, 2]),
        tracker_id=np.array([4, 7, -1]),
        data={
            "class_name": np.array(["car", "person", "car"]),
            "speed_kmh": np.array([54.44444, np.nan, 3.0]),
            "landmarks": np.full((3, 5, 2), 12.345, dtype=np.float32),
            "emotion": np.array(["happy", None, ""], dtype=object),
            "lane": np.array([1, 2, 3], dtype=np.int64),
            "parked": np.array([False, True, False]),
        },
    )
