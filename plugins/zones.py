"""Zones: named polygons; per object its current zones, enter/exit events and dwell times.

Which detections are inside a polygon is supervision's ``PolygonZone`` (one per zone; its
mask test on the anchor point). Around it this stage keeps, per source, track and zone, a
debounced state: the state flips only after ``min_frames`` consecutive frames on the other
side of the edge, and the flip is dated to the first of those frames, so jitter on an edge
makes no events and dwell times stay exact (dwell = first frame outside - first frame
inside, in the source's timestamps). A track that disappears while inside leaves the zone
``lost_after_s`` after it was last seen, dated to its last sighting. PolygonZone's own
``current_count`` is not used: it counts detections of one frame, not tracks over time.

Output: ``Detections.data["zones"]`` (per detection, the list of zone names it is in; empty
for untracked detections), frame events ``{"type": "zone_entered", "zone", "track_id",
"class_name", "entered_pts_ns"}`` and ``{"type": "zone_left", ..., "left_pts_ns",
"dwell_s", "reason"}`` (``reason``: ``left`` or ``lost``), dwell statistics per zone in
``summary()``, and, after a drawing stage with video, the polygons with their occupancy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import supervision as sv

from engine.checks import check_int, check_number, check_str
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.stage import BaseStage, Context
from plugins.regions import (
    check_anchor,
    check_classes,
    check_points,
    check_regions,
    class_names,
    draw_label,
    load_plane,
    to_pixels,
)

logger = logging.getLogger(__name__)

_KEYS = {"name", "polygon", "classes"}
_COLORS = [(80, 200, 80), (200, 120, 40), (60, 60, 220), (200, 200, 60)]
_MAX_DWELLS = 10_000  # per zone, for the summary's statistics


@dataclass
class _Presence:
    """One track against one zone."""

    inside: bool = False
    run: int = 0  # consecutive frames observed on the other side
    run_start_pts_ns: int = 0
    entered_pts_ns: int = 0


@dataclass
class _TrackZones:
    last_seen_pts_ns: int
    class_name: str
    presence: list[_Presence] = field(default_factory=list)


@dataclass
class _ZoneStats:
    entries: int = 0
    exits: int = 0
    dwells_s: list[float] = field(default_factory=list)


class ZoneMonitor(BaseStage):
    """Keeps which tracks are in which named zones and for how long (module docstring).

    Args:
        zones: ``[{name, polygon: [[x, y], ...], classes: [...]}]``; ``classes`` limits
            which objects the zone watches.
        layer: The tracked detection layer.
        anchor: Box point that must lie inside (``bottom_center``).
        min_frames: Consecutive frames inside (outside) before an object enters (leaves).
        lost_after_s: A track unseen this long while inside leaves, dated to its last sighting.
        calibration: Calibration YAML; when given, polygon points are road-plane metres.

    Raises:
        ConfigError: An argument is invalid.
    """

    def __init__(
        self,
        *,
        zones: list[dict[str, Any]],
        layer: str = OBJECTS_LAYER,
        anchor: str = "bottom_center",
        min_frames: int = 3,
        lost_after_s: float = 2.0,
        calibration: str | None = None,
    ) -> None:
        self.layer = check_str("zones: layer", layer)
        self.anchor = check_anchor("zones", anchor)
        self.min_frames = check_int("zones: min_frames", min_frames, low=1)
        self.lost_after_ns = int(
            check_number("zones: lost_after_s", lost_after_s, low=0, low_open=True) * 1e9
        )
        self.calibration = None if calibration is None else check_str("zones: calibration", calibration)
        checked = check_regions("zones", "zones", zones, _KEYS, {"name", "polygon"})
        self.names = [zone["name"] for zone in checked]
        self.polygons = [
            check_points(f"zones: zones[{i}].polygon", z["polygon"], minimum=3) for i, z in enumerate(checked)
        ]
        self.classes = [check_classes(f"zones: zones[{i}]", z.get("classes")) for i, z in enumerate(checked)]
        self._zones: list[sv.PolygonZone] = []
        self._pixels: list[np.ndarray] = []
        self._tracks: dict[str, dict[int, _TrackZones]] = {}
        self._stats = {name: _ZoneStats() for name in self.names}

    def open(self, context: Context) -> None:
        """Map the polygons to pixels (through the calibration, if any) and build the zones."""
        plane = load_plane("zones", self.calibration, context)
        self._pixels = [to_pixels(polygon, plane) for polygon in self.polygons]
        self._zones = [
            sv.PolygonZone(np.round(pixels).astype(np.int64), triggering_anchors=[self.anchor])
            for pixels in self._pixels
        ]
        self._tracks.clear()
        self._stats = {name: _ZoneStats() for name in self.names}

    def __call__(self, batch: Batch) -> Batch:
        """Update every frame's zone memberships, in order."""
        for frame in batch:
            self._update(frame)
            if frame.canvas is not None:
                self._draw(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Close the source's open visits into the statistics (no events: no frame left)."""
        for track in self._tracks.pop(source_id, {}).values():
            for name, presence in zip(self.names, track.presence, strict=True):
                if presence.inside:
                    self._record_exit(name, (track.last_seen_pts_ns - presence.entered_pts_ns) / 1e9)

    def occupancy(self, source_id: str) -> dict[str, list[int]]:
        """Per zone, the track ids inside it now."""
        tracks = self._tracks.get(source_id, {})
        return {
            name: sorted(tid for tid, track in tracks.items() if track.presence[i].inside)
            for i, name in enumerate(self.names)
        }

    def summary(self) -> dict[str, Any]:
        """Per zone: entries, exits, and dwell time statistics of the finished visits."""
        zones: dict[str, Any] = {}
        for name, stats in self._stats.items():
            dwells = np.asarray(stats.dwells_s, dtype=np.float64)
            zones[name] = {
                "entries": stats.entries,
                "exits": stats.exits,
                "dwell_s": None
                if len(dwells) == 0
                else {
                    "mean": round(float(dwells.mean()), 3),
                    "median": round(float(np.median(dwells)), 3),
                    "max": round(float(dwells.max()), 3),
                },
            }
        return {"zones": zones}

    def _record_exit(self, name: str, dwell_s: float) -> None:
        stats = self._stats[name]
        stats.exits += 1
        if len(stats.dwells_s) < _MAX_DWELLS:
            stats.dwells_s.append(dwell_s)

    def _update(self, frame: Frame) -> None:
        detections = frame.layer(self.layer)
        pts_ns = int(frame.pts_ns)
        tracks = self._tracks.setdefault(frame.source_id, {})
        n = len(detections)
        zones_column = np.empty(n, dtype=object)
        for i in range(n):
            zones_column[i] = []
        ids = np.full(n, NO_TRACK_ID) if detections.tracker_id is None else np.asarray(detections.tracker_id)
        tracked = np.flatnonzero(ids != NO_TRACK_ID)
        if len(tracked):
            inside = np.stack([zone.trigger(detections) for zone in self._zones], axis=1)  # (n, zones)
            names = class_names(detections)
            for index in tracked.tolist():
                track_id = int(ids[index])
                track = tracks.get(track_id)
                if track is None:
                    track = tracks[track_id] = _TrackZones(
                        pts_ns, names[index], [_Presence() for _ in self.names]
                    )
                track.last_seen_pts_ns, track.class_name = pts_ns, names[index]
                for z, presence in enumerate(track.presence):
                    classes = self.classes[z]
                    watched = classes is None or names[index] in classes
                    self._observe(frame, z, track_id, track, presence, bool(inside[index, z]) and watched)
                    if presence.inside:
                        zones_column[index].append(self.names[z])
        for track_id in [
            t for t, track in tracks.items() if pts_ns - track.last_seen_pts_ns > self.lost_after_ns
        ]:
            track = tracks.pop(track_id)
            for z, presence in enumerate(track.presence):
                if presence.inside:
                    self._leave(frame, z, track_id, track, presence, track.last_seen_pts_ns, "lost")
        if n:
            detections.data["zones"] = zones_column

    def _observe(
        self, frame: Frame, z: int, track_id: int, track: _TrackZones, presence: _Presence, observed: bool
    ) -> None:
        if observed == presence.inside:
            presence.run = 0
            return
        if presence.run == 0:
            presence.run_start_pts_ns = int(frame.pts_ns)
        presence.run += 1
        if presence.run < self.min_frames:
            return
        presence.run = 0
        if observed:
            presence.inside, presence.entered_pts_ns = True, presence.run_start_pts_ns
            self._stats[self.names[z]].entries += 1
            frame.events.append(
                {
                    "type": "zone_entered",
                    "zone": self.names[z],
                    "track_id": track_id,
                    "class_name": track.class_name,
                    "entered_pts_ns": presence.entered_pts_ns,
                }
            )
        else:
            self._leave(frame, z, track_id, track, presence, presence.run_start_pts_ns, "left")

    def _leave(
        self,
        frame: Frame,
        z: int,
        track_id: int,
        track: _TrackZones,
        presence: _Presence,
        left_pts_ns: int,
        reason: str,
    ) -> None:
        presence.inside = False
        dwell_s = (left_pts_ns - presence.entered_pts_ns) / 1e9
        self._record_exit(self.names[z], dwell_s)
        frame.events.append(
            {
                "type": "zone_left",
                "zone": self.names[z],
                "track_id": track_id,
                "class_name": track.class_name,
                "entered_pts_ns": presence.entered_pts_ns,
                "left_pts_ns": left_pts_ns,
                "dwell_s": round(dwell_s, 3),
                "reason": reason,
            }
        )

    def _draw(self, frame: Frame) -> None:
        canvas = frame.draw_target()
        occupancy = self.occupancy(frame.source_id)
        for z, (name, pixels) in enumerate(zip(self.names, self._pixels, strict=True)):
            color = _COLORS[z % len(_COLORS)]
            polygon = np.round(pixels).astype(np.int32)
            cv2.polylines(canvas, [polygon], isClosed=True, color=color, thickness=1, lineType=cv2.LINE_AA)
            dwells = self._stats[name].dwells_s
            mean = f", mean {np.mean(dwells):.1f} s" if dwells else ""
            # A legend stacked up from the bottom-left corner, in the zone's colour: labels on
            # the polygons pile up where they share an edge and hide the road on small frames.
            row_px = max(12, canvas.shape[0] // 20)
            bottom = canvas.shape[0] - 4 - (len(self.names) - 1 - z) * row_px
            draw_label(canvas, f"{name}: {len(occupancy[name])} in{mean}", (0, bottom), color)
