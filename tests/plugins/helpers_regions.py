"""Scripted scenes for the zones, lines and alerts stages: tracked boxes on known paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import supervision as sv

from engine.frame import Frame
from engine.stage import Context
from tests.helpers import make_frame

FPS = 30.0
BOX_W, BOX_H = 10.0, 10.0


def scene(
    paths: Mapping[int, Sequence[tuple[float, float] | None]],
    *,
    classes: Mapping[int, str] | None = None,
    frames: int | None = None,
    source_id: str = "cam0",
) -> list[Frame]:
    """Frames where track ``t`` has its box's bottom centre at ``paths[t][i]`` on frame ``i``
    (None: not detected on that frame). Frames are 200x200 at 30 fps."""
    count = frames if frames is not None else max(len(path) for path in paths.values())
    out = []
    for index in range(count):
        frame = make_frame(index, source_id=source_id, width=200, height=200, fps=FPS)
        boxes, ids, names = [], [], []
        for track_id, path in paths.items():
            point = path[index] if index < len(path) else None
            if point is None:
                continue
            x, y = point
            boxes.append([x - BOX_W / 2, y - BOX_H, x + BOX_W / 2, y])
            ids.append(track_id)
            names.append((classes or {}).get(track_id, "car"))
        n = len(boxes)
        frame.layers["objects"] = sv.Detections(
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            confidence=np.full(n, 0.9, dtype=np.float32),
            class_id=np.zeros(n, dtype=int),
            tracker_id=np.asarray(ids, dtype=int),
            data={"class_name": np.asarray(names, dtype=str)},
        )
        out.append(frame)
    return out


def linear(
    start: tuple[float, float], end: tuple[float, float], steps: int
) -> list[tuple[float, float] | None]:
    """``steps`` points from ``start`` to ``end``, evenly spaced."""
    xs = np.linspace(start[0], end[0], steps)
    ys = np.linspace(start[1], end[1], steps)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def context(width: int = 200, height: int = 200) -> Context:
    """A context with one 200x200 30 fps source."""
    from engine.frame import SourceInfo

    info = SourceInfo("cam0", "test://", width, height, FPS, live=False)
    return Context(sources={"cam0": info})


def events_of(frames: Sequence[Frame], kind: str) -> list[tuple[int, dict]]:
    """(frame index, event) of every frame event of one type."""
    return [(frame.index, event) for frame in frames for event in frame.events if event["type"] == kind]
