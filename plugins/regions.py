"""What the ``zones``, ``lines`` and ``alerts`` stages share: named regions from YAML, anchors,
the optional road-plane calibration, and drawing of region labels.

Convention:
    - Region points are image pixels ``(x, y)``, or metres on the calibrated road plane when
      the stage is given a ``calibration`` (mapped to pixels once, in ``open``: a homography
      maps straight lines to straight lines, so a line or polygon edge in metres is still
      one in pixels).
    - The point of a box that decides where an object is: ``anchor``, one of
      :data:`engine.geometry.plane.ANCHORS` (``bottom_center`` by default: where a vehicle
      or a person touches the ground).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

from engine.checks import check_str
from engine.errors import ConfigError
from engine.geometry.calibration import Calibration
from engine.geometry.plane import ANCHORS
from engine.stage import Context


def check_anchor(stage: str, anchor: Any) -> sv.Position:
    """The supervision position of an anchor name."""
    if anchor not in ANCHORS:
        raise ConfigError(f"{stage}: anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    return sv.Position(str(anchor).upper())


def check_points(where: str, value: Any, *, minimum: int, maximum: int | None = None) -> np.ndarray:
    """A list of ``[x, y]`` numbers as an ``(n, 2)`` float64 array."""
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty((0,))
    count_ok = points.ndim == 2 and points.shape[1] == 2 and points.shape[0] >= minimum
    if not count_ok or (maximum is not None and points.shape[0] > maximum) or not np.isfinite(points).all():
        size = f"{minimum}" if maximum == minimum else f"at least {minimum}"
        raise ConfigError(f"{where}: expected {size} [x, y] points, got {value!r}")
    return points


def check_regions(
    stage: str, kind: str, regions: Any, keys: set[str], required: set[str]
) -> list[dict[str, Any]]:
    """A non-empty list of mappings with unique ``name`` and only the known keys."""
    if not isinstance(regions, Sequence) or isinstance(regions, str) or not regions:
        raise ConfigError(f"{stage}: {kind} must be a non-empty list, got {regions!r}")
    names: set[str] = set()
    checked = []
    for position, region in enumerate(regions):
        where = f"{stage}: {kind}[{position}]"
        if not isinstance(region, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {region!r}")
        unknown = set(region) - keys
        if unknown:
            raise ConfigError(
                f"{where}: unexpected key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(keys))}"
            )
        missing = required - set(region)
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(sorted(missing))}")
        name = check_str(f"{where}.name", region["name"])
        if name in names:
            raise ConfigError(f"{where}: name {name!r} is used twice")
        names.add(name)
        checked.append(dict(region))
    return checked


def check_classes(where: str, classes: Any) -> frozenset[str] | None:
    """None (every class) or a set of class names."""
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"{where}: classes must be a list of class names, got {classes!r}")
    return frozenset(classes)


def load_plane(stage: str, calibration: Any, context: Context) -> Calibration | None:
    """Load the calibration that makes region points metres, checked against the sources."""
    if calibration is None:
        return None
    loaded = Calibration.load(Path(calibration))
    for source_id, info in context.sources.items():
        loaded.check_image_size(info.width, info.height, source_id)
    return loaded


def to_pixels(points: np.ndarray, plane: Calibration | None) -> np.ndarray:
    """Region points in pixels (mapped from metres when there is a calibration)."""
    return points if plane is None else plane.world_to_image(points)


def class_names(detections: sv.Detections) -> list[str]:
    """Per detection its class name (the track's voted class after ``track``), else its id."""
    if "class_name" in detections.data:
        return np.asarray(detections.data["class_name"]).astype(str).tolist()  # type: ignore[no-any-return]
    if detections.class_id is not None:
        return [str(c) for c in np.asarray(detections.class_id).tolist()]
    return ["object"] * len(detections)


def draw_label(canvas: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int]) -> None:
    """Text on a dark box, kept inside the canvas."""
    scale = max(0.35, canvas.shape[0] / 700)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(min(max(0, origin[0]), max(0, canvas.shape[1] - width - 4)))
    y = int(min(max(height + 4, origin[1]), canvas.shape[0] - baseline - 2))
    cv2.rectangle(canvas, (x, y - height - 4), (x + width + 4, y + baseline + 2), (0, 0, 0), -1)
    cv2.putText(canvas, text, (x + 2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
