"""A synthetic traffic scene with known identities, for tracking and annotation tests."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import supervision as sv

from engine.frame import Frame, SourceInfo

FPS = 25.0
FRAME_PERIOD_NS = int(1e9 / FPS)
WIDTH, HEIGHT = 640, 360
BOX_PX = 40.0
#: Ground-truth objects: id -> (start x, y, x pixels per frame).
OBJECTS: dict[int, tuple[float, float, float]] = {
    7: (20.0, 40.0, 6.0),
    8: (560.0, 150.0, -5.0),
    9: (100.0, 260.0, 4.0),
}
CLASS_NAMES = {0: "person", 2: "car"}


def source_info(source_id: str = "cam", fps: float | None = FPS) -> SourceInfo:
    """SourceInfo of a synthetic source."""
    return SourceInfo(
        source_id=source_id, uri="synthetic://", width=WIDTH, height=HEIGHT, fps=fps, live=False
    )


def scene_detections(
    frame_position: float,
    rng: np.random.Generator,
    *,
    missing: Iterable[int] = (),
    clutter: bool = True,
) -> sv.Detections:
    """Detections of every object at a (possibly fractional) frame position, shuffled.

    Each box moves at constant speed with +-1 px jitter; ``data["gt_id"]`` holds the true
    identity (-1 for a low-confidence clutter box), ``data["class_name"]`` and
    ``data["speed_kmh"]`` are extras that must survive tracking.
    """
    rows = []
    for gt_id, (x0, y0, vx) in OBJECTS.items():
        if gt_id in missing:
            continue
        x = x0 + vx * frame_position
        rows.append((gt_id, x, y0, 0.9, 2, abs(vx) * 3.6))
    if clutter:  # a faint box far from every object: never tracked, always kept
        rows.append((-1, 300.0, 320.0, 0.05, 0, float("nan")))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    gt = np.array([r[0] for r in rows], dtype=int)
    xy = np.array([[r[1], r[2]] for r in rows], dtype=np.float32)
    xy += rng.uniform(-1.0, 1.0, size=xy.shape).astype(np.float32)
    xyxy = np.concatenate([xy, xy + BOX_PX], axis=1)
    class_id = np.array([r[4] for r in rows], dtype=int)
    return sv.Detections(
        xyxy=xyxy,
        confidence=np.array([r[3] for r in rows], dtype=np.float32),
        class_id=class_id,
        data={
            "gt_id": gt,
            "class_name": np.array([CLASS_NAMES[c] for c in class_id]),
            "speed_kmh": np.array([r[5] for r in rows], dtype=np.float64),
        },
    )


def scene_frame(
    index: int,
    rng: np.random.Generator,
    *,
    source_id: str = "cam",
    frame_position: float | None = None,
    missing: Iterable[int] = (),
    with_image: bool = False,
) -> Frame:
    """A frame of the synthetic scene; pts follows ``frame_position`` (default: ``index``)."""
    position = float(index if frame_position is None else frame_position)
    image = (
        np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8) if with_image else np.zeros((1, 1, 3), dtype=np.uint8)
    )
    return Frame(
        source_id=source_id,
        index=index,
        pts_ns=int(round(position * FRAME_PERIOD_NS)),
        image=image,
        layers={"objects": scene_detections(position, rng, missing=missing)},
    )
