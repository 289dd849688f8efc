"""Detections and frames to JSON-ready Python values (the JSONL sink's schema).

Convention:
    - ``tracker_id`` holds :data:`NO_TRACK_ID` (-1) for a detection without a track id
      (supervision needs an int array); every consumer treats -1 as "no id", and JSON
      writes it as ``null``.
    - One frame becomes::

        {"source": str, "frame": int, "pts_ns": int,
         "layers": {"objects": [{"track_id": int | null, "class_id": int | null,
                                 "class_name": str | null, "confidence": float | null,
                                 "xyxy": [x1, y1, x2, y2], ...extras}]},
         "skipped": str,        # only when a stage skipped the frame
         "events": [...]}       # only when stages reported events

    - Extras are every other ``Detections.data`` column, under its own key. Floats are
      rounded: pixel quantities (``xyxy``, ``landmarks``, keys ending in ``_px``) to 0.1 px,
      confidences (keys ending in ``confidence``) to 4 decimals, anything else to 3.
      NaN and infinities become ``null``. Segmentation masks are not written.

Conversion is vectorised per column (one ``tolist()`` per column), so the cost per
detection is one small dict, the JSON object itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import supervision as sv

from engine.frame import NO_TRACK_ID, Frame

#: Keys every detection record has, in this order; data columns with these names are ignored.
RESERVED_KEYS = ("track_id", "class_id", "class_name", "confidence", "xyxy")

_PIXEL_KEYS = frozenset({"xyxy", "landmarks"})


def has_track_id(detections: sv.Detections) -> np.ndarray:
    """Return a boolean mask of the detections that carry a track id.

    Args:
        detections: Any detections; ``tracker_id`` may be None.

    Returns:
        ``(n,)`` bool array, all False when ``tracker_id`` is None.
    """
    if detections.tracker_id is None:
        return np.zeros(len(detections), dtype=bool)
    return np.asarray(detections.tracker_id) != NO_TRACK_ID


def decimals_for(key: str) -> int:
    """Return how many decimals a float column named ``key`` keeps in JSON."""
    if key in _PIXEL_KEYS or key.endswith("_px"):
        return 1
    if key.endswith("confidence"):
        return 4
    return 3


def floats_to_json(values: Any, decimals: int) -> list[Any]:
    """Round a float array of any shape to nested lists, non-finite values to None."""
    array = np.round(np.asarray(values, dtype=np.float64), decimals)
    finite = np.isfinite(array)
    if finite.all():
        return array.tolist()  # type: ignore[no-any-return]
    as_objects = array.astype(object)
    as_objects[~finite] = None
    return as_objects.tolist()  # type: ignore[no-any-return]


def column_to_json(key: str, values: Any) -> list[Any]:
    """Convert one ``Detections.data`` column to a list of JSON-ready values, one per row."""
    array = np.asarray(values)
    kind = array.dtype.kind
    if kind == "f":
        return floats_to_json(array, decimals_for(key))
    if kind in "S":
        return np.char.decode(array, "utf-8", "replace").tolist()  # type: ignore[no-any-return]
    if kind == "c":
        return array.astype(str).tolist()  # type: ignore[no-any-return]
    # ints, bools, str and object arrays: tolist gives Python values; numpy objects left
    # inside object arrays are handled by the JSON encoder's default.
    return array.tolist()  # type: ignore[no-any-return]


def detections_to_records(detections: sv.Detections) -> list[dict[str, Any]]:
    """Convert detections to one JSON-ready dict per detection (see the module schema).

    Args:
        detections: The detections of one layer of one frame.

    Returns:
        A list of ``len(detections)`` dicts.
    """
    n = len(detections)
    if n == 0:
        return []
    nothing: list[Any] = [None] * n
    if detections.tracker_id is None:
        track_ids = nothing
    else:
        as_objects = np.asarray(detections.tracker_id).astype(object)
        as_objects[as_objects == NO_TRACK_ID] = None
        track_ids = as_objects.tolist()
    class_ids = nothing if detections.class_id is None else np.asarray(detections.class_id).tolist()
    class_name = detections.data.get("class_name")
    class_names = nothing if class_name is None else column_to_json("class_name", class_name)
    confidences = (
        nothing
        if detections.confidence is None
        else floats_to_json(detections.confidence, decimals_for("confidence"))
    )
    keys = list(RESERVED_KEYS)
    columns = [track_ids, class_ids, class_names, confidences, floats_to_json(detections.xyxy, 1)]
    for key, values in detections.data.items():
        # Per-detection pixel arrays (such as aligned face crops, n×h×w×3) are images, not events.
        if key in RESERVED_KEYS or np.ndim(values) >= 4:
            continue
        keys.append(key)
        columns.append(column_to_json(key, values))
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


def frame_to_record(frame: Frame) -> dict[str, Any]:
    """Convert a frame and all its detection layers to one JSON-ready dict."""
    record: dict[str, Any] = {
        "source": frame.source_id,
        "frame": int(frame.index),
        "pts_ns": int(frame.pts_ns),
        "layers": {name: detections_to_records(dets) for name, dets in frame.layers.items()},
    }
    if frame.skipped_reason is not None:
        record["skipped"] = frame.skipped_reason
    events = getattr(frame, "events", None)
    if events:
        record["events"] = list(events)
    return record


def _json_default(value: Any) -> Any:
    # Only reached for what json cannot write itself: numpy values inside object columns
    # or events, paths and the like. A sink must not die on an odd extra, so fall back to str.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _without_non_finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _without_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_non_finite(item) for item in value]
    if isinstance(value, (np.floating, np.ndarray)):
        return _without_non_finite(_json_default(value))
    return value


def to_json_line(record: dict[str, Any]) -> str:
    """Serialize a record to one line of strict JSON (no NaN, no newline inside)."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default)
    except ValueError:
        # A non-finite float hid in an object column or an event: clean and retry. The
        # fast path above never walks the record in Python.
        return json.dumps(
            _without_non_finite(record),
            separators=(",", ":"),
            allow_nan=False,
            default=_json_default,
        )
