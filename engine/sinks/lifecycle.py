"""Object lifecycle: turns tracked detections and stage events into facts about objects.

Convention:
    - One object per ``(source, track_id)`` of the tracked layer (``objects`` by default).
      ``new`` when its id first appears (trackers give ids only to confirmed tracks);
      ``end`` when it was not seen for ``end_after_s`` of the source's timestamps (longer
      than the tracker keeps a lost track, so an ended id never comes back), when its
      source ends, when a supervised source loses its connection (``source_lost``, at each
      object's last sighting: the tracker starts afresh after the reconnect; the objects
      sink hears the loss from the pipeline) or when the run stops. A final speed the speed
      stage issues at the loss is in ``vehicles.csv`` and ``events.jsonl``, not in that
      ``end`` (it comes with the next segment's first frame, after the object ended).
    - ``update`` when something a consumer cares about changes, one change per event under
      ``change.kind``: ``zone_entered``, ``zone_left`` (with ``dwell_s``), ``line_crossed``
      (``line``, ``direction``) from the ``zones`` and ``lines`` stages' frame events;
      ``class_changed`` (the majority vote over the track's ``class_name`` values changed),
      ``speed_available`` (first finite ``speed_kmh``), ``speed_final`` (the speed stage's
      ``vehicle_speed_final`` event), ``emotion_changed``. Class and emotion changes are
      rate-limited to one per ``update_interval_s`` per object (the last one wins at
      ``end``); the others are never dropped.
    - ``alert`` for each ``{"type": "alert", ...}`` frame event (the ``alerts`` stage).
    - Events are built here without ``id``, ``seq`` and ``time``; the objects sink numbers
      and stamps them. ``pts_ns`` is the timestamp of the frame that produced the event.

Per-detection work is a loop over the tracked detections of a frame (a handful); the
columns are converted with one ``tolist()`` each, never per element.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.checks import check_number, check_str
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Frame

logger = logging.getLogger(__name__)

#: Frame event types the lifecycle turns into ``update`` events.
ZONE_ENTERED, ZONE_LEFT, LINE_CROSSED = "zone_entered", "zone_left", "line_crossed"
SPEED_FINAL, SOURCE_RECONNECTED, ALERT = "vehicle_speed_final", "source_reconnected", "alert"
#: ``end_reason`` of objects ended because their reconnecting source lost its connection.
SOURCE_LOST = "source_lost"


def _number(value: Any, decimals: int = 3) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, decimals) if math.isfinite(number) else None


@dataclass
class TrackedObject:
    """What is known about one object (one track) so far."""

    track_id: int
    first_seen_pts_ns: int
    last_seen_pts_ns: int
    frames: int = 0
    class_votes: Counter[str] = field(default_factory=Counter)
    class_name: str | None = None
    confidence: float | None = None
    xyxy: list[float] = field(default_factory=list)
    speed_kmh: float | None = None
    max_speed_kmh: float | None = None
    speed_final: dict[str, Any] | None = None
    emotion: str | None = None
    reported_emotion: str | None = None
    zones: list[str] = field(default_factory=list)
    zone_visits: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    last_rate_limited_pts_ns: int | None = None
    snapshot_score: float = 0.0
    snapshot: np.ndarray | None = None

    def describe(self) -> dict[str, Any]:
        """The object's current fields, as ``new`` and ``update`` events carry them."""
        return {
            "track_id": self.track_id,
            "class_name": self.class_name,
            "confidence": _number(self.confidence, 4),
            "xyxy": [round(v, 1) for v in self.xyxy],
            "first_seen_pts_ns": self.first_seen_pts_ns,
            "last_seen_pts_ns": self.last_seen_pts_ns,
            "zones": list(self.zones),
            "speed_kmh": _number(self.speed_kmh, 2),
            **({"emotion": self.emotion} if self.emotion is not None else {}),
        }


class ObjectLifecycle:
    """Derives lifecycle events from frames, per source (see the module convention).

    Args:
        layer: The tracked detection layer.
        end_after_s: An object not seen for this long (source timestamps) has ended.
        update_interval_s: At most one class or emotion change per object in this time.
        snapshot_dir: Where the best crop of each object is written as JPEG at its end
            (``<source>_<track_id>.jpg``); None writes none.
    """

    def __init__(
        self,
        *,
        layer: str = OBJECTS_LAYER,
        end_after_s: float = 2.0,
        update_interval_s: float = 1.0,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.layer = check_str("layer", layer)
        self.end_after_ns = int(check_number("end_after_s", end_after_s, low=0, low_open=True) * 1e9)
        self.update_interval_ns = int(check_number("update_interval_s", update_interval_s, low=0) * 1e9)
        self.snapshot_dir = snapshot_dir
        self._objects: dict[str, dict[int, TrackedObject]] = {}
        self.counts: Counter[str] = Counter()

    def open_objects(self, source_id: str) -> Mapping[int, TrackedObject]:
        """The objects of a source that have not ended."""
        return self._objects.get(source_id, {})

    def frame_events(self, frame: Frame) -> list[dict[str, Any]]:
        """Every lifecycle event one frame produces, in order."""
        source_id, pts_ns = frame.source_id, int(frame.pts_ns)
        objects = self._objects.setdefault(source_id, {})
        events: list[dict[str, Any]] = []
        if any(event.get("type") == SOURCE_RECONNECTED for event in frame.events):
            events += self.end_source(source_id, reason=SOURCE_RECONNECTED, pts_ns=pts_ns)
            objects = self._objects.setdefault(source_id, {})
        events += self._observe(frame, objects)
        for stage_event in frame.events:
            events += self._stage_event(source_id, pts_ns, objects, stage_event)
        for track_id in [
            t for t, obj in objects.items() if pts_ns - obj.last_seen_pts_ns > self.end_after_ns
        ]:
            events.append(self._end(source_id, pts_ns, objects.pop(track_id), "lost"))
        return events

    def end_source(self, source_id: str, *, reason: str, pts_ns: int | None = None) -> list[dict[str, Any]]:
        """End every object of a source (its end, a reconnect, a stop)."""
        objects = self._objects.pop(source_id, {})
        return [
            self._end(source_id, obj.last_seen_pts_ns if pts_ns is None else pts_ns, obj, reason)
            for obj in objects.values()
        ]

    def end_all(self, reason: str) -> list[dict[str, Any]]:
        """End every object of every source."""
        return [
            event for source_id in list(self._objects) for event in self.end_source(source_id, reason=reason)
        ]

    def _event(
        self, kind: str, source_id: str, pts_ns: int, body: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        self.counts[kind] += 1
        return {
            "id": "",
            "type": kind,
            "source": source_id,
            "seq": 0,
            "pts_ns": pts_ns,
            "time": "",
            "object": body,
            **extra,
        }

    def _update(
        self, source_id: str, pts_ns: int, obj: TrackedObject, change: dict[str, Any]
    ) -> dict[str, Any]:
        return self._event("update", source_id, pts_ns, obj.describe(), change=change)

    def _observe(self, frame: Frame, objects: dict[int, TrackedObject]) -> list[dict[str, Any]]:
        detections = frame.layers.get(self.layer)
        if detections is None or detections.tracker_id is None or len(detections) == 0:
            return []
        tracked = np.flatnonzero(np.asarray(detections.tracker_id) != NO_TRACK_ID)
        if len(tracked) == 0:
            return []
        source_id, pts_ns = frame.source_id, int(frame.pts_ns)
        ids = np.asarray(detections.tracker_id)[tracked].tolist()
        boxes = np.asarray(detections.xyxy, dtype=np.float64)[tracked]
        xyxy = boxes.tolist()
        nothing: list[Any] = [None] * len(tracked)
        conf = (
            nothing if detections.confidence is None else np.asarray(detections.confidence)[tracked].tolist()
        )
        data = detections.data
        if "class_name" in data:
            names = np.asarray(data["class_name"])[tracked].astype(str).tolist()
        elif detections.class_id is not None:  # no names: the class ids stand in
            names = [str(c) for c in np.asarray(detections.class_id)[tracked].tolist()]
        else:
            names = nothing
        speeds = (
            np.asarray(data["speed_kmh"], dtype=np.float64)[tracked].tolist()
            if "speed_kmh" in data
            else nothing
        )
        emotions = np.asarray(data["emotion"])[tracked].tolist() if "emotion" in data else nothing
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        events: list[dict[str, Any]] = []
        for i, track_id in enumerate(ids):
            obj = objects.get(track_id)
            is_new = obj is None
            if obj is None:
                obj = objects[track_id] = TrackedObject(track_id, pts_ns, pts_ns)
            obj.last_seen_pts_ns, obj.frames, obj.xyxy = pts_ns, obj.frames + 1, xyxy[i]
            obj.confidence = conf[i]
            changes: list[dict[str, Any]] = []
            if names[i] is not None:
                obj.class_votes[names[i]] += 1
                voted = obj.class_votes.most_common(1)[0][0]
                if voted != obj.class_name:
                    if obj.class_name is not None and self._may_report(obj, pts_ns):
                        changes.append({"kind": "class_changed", "from": obj.class_name, "to": voted})
                    if obj.class_name is None or changes:
                        obj.class_name = voted
            speed = speeds[i]
            if speed is not None and math.isfinite(speed):
                if obj.speed_kmh is None and not is_new:
                    changes.append({"kind": "speed_available", "speed_kmh": round(speed, 2)})
                obj.speed_kmh = speed
                obj.max_speed_kmh = speed if obj.max_speed_kmh is None else max(obj.max_speed_kmh, speed)
            emotion = emotions[i]
            if emotion is not None and emotion != "":
                obj.emotion = str(emotion)
                if obj.reported_emotion is None:
                    obj.reported_emotion = obj.emotion
                elif obj.emotion != obj.reported_emotion and self._may_report(obj, pts_ns):
                    changes.append(
                        {"kind": "emotion_changed", "from": obj.reported_emotion, "to": obj.emotion}
                    )
                    obj.reported_emotion = obj.emotion
            if self.snapshot_dir is not None:
                self._keep_snapshot(frame, obj, xyxy[i], areas[i] * (conf[i] or 1.0))
            if is_new:
                events.append(self._event("new", source_id, pts_ns, obj.describe()))
            events += [self._update(source_id, pts_ns, obj, change) for change in changes]
        return events

    def _may_report(self, obj: TrackedObject, pts_ns: int) -> bool:
        last = obj.last_rate_limited_pts_ns
        if last is not None and pts_ns - last < self.update_interval_ns:
            return False
        obj.last_rate_limited_pts_ns = pts_ns
        return True

    def _stage_event(
        self, source_id: str, pts_ns: int, objects: dict[int, TrackedObject], stage_event: dict[str, Any]
    ) -> list[dict[str, Any]]:
        kind = stage_event.get("type")
        if kind not in (ZONE_ENTERED, ZONE_LEFT, LINE_CROSSED, SPEED_FINAL, ALERT):
            return []
        track_id = stage_event.get("track_id")
        obj = objects.get(track_id) if isinstance(track_id, int) else None
        body = obj.describe() if obj is not None else {"track_id": track_id}
        if kind == ALERT:
            if obj is not None:
                obj.alerts.append(str(stage_event.get("rule")))
                body = obj.describe()
            details = {k: v for k, v in stage_event.items() if k not in ("type", "track_id")}
            return [self._event("alert", source_id, pts_ns, body, alert=details)]
        if obj is None:
            # Every update falls between its object's new and end, so a consumer never sees
            # an object it was not told about; the event itself stays in events.jsonl (and a
            # final speed in vehicles.csv).
            logger.debug("%s event for track %s, which is not open on %s", kind, track_id, source_id)
            self.counts["unattached_stage_events"] += 1
            return []
        change: dict[str, Any] = {"kind": kind, **_details(stage_event)}
        if kind == ZONE_ENTERED:
            zone = str(stage_event.get("zone"))
            if zone not in obj.zones:
                obj.zones.append(zone)
            obj.zone_visits.append(
                {"zone": zone, "entered_pts_ns": stage_event.get("entered_pts_ns", pts_ns)}
            )
        elif kind == ZONE_LEFT:
            zone = str(stage_event.get("zone"))
            if zone in obj.zones:
                obj.zones.remove(zone)
            for visit in reversed(obj.zone_visits):
                if visit["zone"] == zone and "left_pts_ns" not in visit:
                    visit["left_pts_ns"] = stage_event.get("left_pts_ns", pts_ns)
                    visit["dwell_s"] = stage_event.get("dwell_s")
                    break
        elif kind == LINE_CROSSED:
            obj.lines.append({k: stage_event.get(k) for k in ("line", "direction")} | {"pts_ns": pts_ns})
        else:  # the speed stage's final speed
            change = {"kind": "speed_final", **_details(stage_event)}
            obj.speed_final = _details(stage_event)
        return [self._update(source_id, pts_ns, obj, change)]

    def _keep_snapshot(self, frame: Frame, obj: TrackedObject, box: list[float], score: float) -> None:
        if score <= obj.snapshot_score * 1.1:  # copy only on a clear improvement
            return
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(frame.width, int(math.ceil(box[2]))), min(frame.height, int(math.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            return
        image = frame.image
        if isinstance(image, np.ndarray):
            crop = image[y1:y2, x1:x2].copy()
        else:  # a 3xHxW torch tensor on the GPU
            crop = image[:, y1:y2, x1:x2].permute(1, 2, 0).contiguous().cpu().numpy()
        obj.snapshot, obj.snapshot_score = crop, score

    def _end(self, source_id: str, pts_ns: int, obj: TrackedObject, reason: str) -> dict[str, Any]:
        body = obj.describe()
        final = obj.speed_final
        body.update(
            {
                "end_reason": reason,
                "frames": obj.frames,
                "duration_s": round((obj.last_seen_pts_ns - obj.first_seen_pts_ns) / 1e9, 3),
                "class_votes": dict(obj.class_votes.most_common()),
                "zones_entered": obj.zone_visits,
                "lines_crossed": obj.lines,
                "max_speed_kmh": _number(obj.max_speed_kmh, 2),
                "speed_final": final,
                "alerts": obj.alerts,
                "snapshot": self._write_snapshot(source_id, obj),
            }
        )
        return self._event("end", source_id, pts_ns, body)

    def _write_snapshot(self, source_id: str, obj: TrackedObject) -> str | None:
        if self.snapshot_dir is None or obj.snapshot is None:
            return None
        path = self.snapshot_dir / f"{source_id}_{obj.track_id}.jpg"
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), obj.snapshot):
                raise OSError("the encoder refused the crop")
        except (OSError, cv2.error) as error:
            logger.warning("cannot write snapshot %s: %s", path, error)
            return None
        obj.snapshot = None
        return str(path)


def _details(stage_event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage_event.items() if k not in ("type", "track_id")}
