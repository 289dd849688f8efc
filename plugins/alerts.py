"""Alert rules from the pipeline YAML: each rule fires at most once per track.

Rule kinds (one per rule, by the key it has)::

    - {name: speeding, speed_above_kmh: 130, classes: [car]}     # current speed_kmh above
    - {name: loitering, zone: kerb, dwell_above_s: 30}           # still inside after that long
    - {name: truck_in, line: road, classes: [truck], direction: northbound}   # counted crossing

Put the stage after the stages whose output it reads (``speed``, ``zones``, ``lines``). A
rule appends ``{"type": "alert", "rule", "track_id", "class_name", ...}`` to the frame's
events with what triggered it (``speed_kmh``; ``zone`` and ``dwell_s``; ``line`` and
``direction``); the objects sink publishes it as an ``alert`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.checks import check_number, check_str
from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.stage import BaseStage
from plugins.regions import check_classes, check_regions, class_names

_KEYS = {"name", "speed_above_kmh", "zone", "dwell_above_s", "line", "direction", "classes"}
_KINDS = ("speed_above_kmh", "dwell_above_s", "line")


@dataclass(frozen=True)
class AlertRule:
    """One validated rule."""

    name: str
    kind: str
    classes: frozenset[str] | None
    threshold: float = 0.0
    zone: str | None = None
    line: str | None = None
    direction: str | None = None

    def watches(self, class_name: str) -> bool:
        """True when the rule applies to this class."""
        return self.classes is None or class_name in self.classes


def _rule(position: int, spec: dict[str, Any]) -> AlertRule:
    where = f"alerts: rules[{position}]"
    kinds = [kind for kind in _KINDS if kind in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of speed_above_kmh, dwell_above_s (with zone), line")
    kind, classes = kinds[0], check_classes(where, spec.get("classes"))
    if kind == "speed_above_kmh":
        return AlertRule(
            spec["name"], kind, classes, check_number(f"{where}.speed_above_kmh", spec[kind], low=0)
        )
    if kind == "dwell_above_s":
        zone = check_str(f"{where}.zone", spec.get("zone"))
        return AlertRule(
            spec["name"], kind, classes, check_number(f"{where}.dwell_above_s", spec[kind], low=0), zone=zone
        )
    direction = None if spec.get("direction") is None else check_str(f"{where}.direction", spec["direction"])
    return AlertRule(
        spec["name"], kind, classes, line=check_str(f"{where}.line", spec["line"]), direction=direction
    )


class AlertRules(BaseStage):
    """Turns speeds, zone dwell times and line crossings into alerts (module docstring).

    Args:
        rules: The rules, each with a unique ``name``.
        layer: The tracked detection layer (for speeds).

    Raises:
        ConfigError: A rule is invalid.
    """

    def __init__(self, *, rules: list[dict[str, Any]], layer: str = OBJECTS_LAYER) -> None:
        self.layer = check_str("alerts: layer", layer)
        self.rules = [
            _rule(i, spec) for i, spec in enumerate(check_regions("alerts", "rules", rules, _KEYS, {"name"}))
        ]
        self._fired: dict[str, set[tuple[str, int]]] = {}
        # source -> (track, zone) -> (entered pts, class name)
        self._inside: dict[str, dict[tuple[int, str], tuple[int, str]]] = {}
        self.fired_counts = {rule.name: 0 for rule in self.rules}

    def __call__(self, batch: Batch) -> Batch:
        """Check every rule on every frame."""
        for frame in batch:
            self._check(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Forget the source's tracks."""
        self._fired.pop(source_id, None)
        self._inside.pop(source_id, None)

    def summary(self) -> dict[str, Any]:
        """Alerts fired per rule."""
        return {"alerts": dict(self.fired_counts)}

    def _fire(self, frame: Frame, rule: AlertRule, track_id: int, class_name: str, **details: Any) -> None:
        fired = self._fired.setdefault(frame.source_id, set())
        if (rule.name, track_id) in fired:
            return
        fired.add((rule.name, track_id))
        self.fired_counts[rule.name] += 1
        frame.events.append(
            {"type": "alert", "rule": rule.name, "track_id": track_id, "class_name": class_name, **details}
        )

    def _check(self, frame: Frame) -> None:
        inside = self._inside.setdefault(frame.source_id, {})
        for event in list(frame.events):
            kind = event.get("type")
            if kind == "zone_entered":
                inside[(event["track_id"], event["zone"])] = (
                    int(event["entered_pts_ns"]),
                    str(event["class_name"]),
                )
            elif kind == "zone_left":
                inside.pop((event["track_id"], event["zone"]), None)
            elif kind == "line_crossed":
                for rule in self.rules:
                    if (
                        rule.kind == "line"
                        and rule.line == event["line"]
                        and rule.direction in (None, event["direction"])
                        and rule.watches(str(event["class_name"]))
                    ):
                        self._fire(
                            frame,
                            rule,
                            event["track_id"],
                            event["class_name"],
                            line=rule.line,
                            direction=event["direction"],
                        )
        for rule in self.rules:
            if rule.kind == "dwell_above_s":
                for (track_id, zone), (entered_pts_ns, class_name) in inside.items():
                    dwell_s = (frame.pts_ns - entered_pts_ns) / 1e9
                    if zone == rule.zone and dwell_s > rule.threshold and rule.watches(class_name):
                        self._fire(frame, rule, track_id, class_name, zone=zone, dwell_s=round(dwell_s, 3))
        speed_rules = [rule for rule in self.rules if rule.kind == "speed_above_kmh"]
        detections = frame.layer(self.layer)
        if not speed_rules or "speed_kmh" not in detections.data or detections.tracker_id is None:
            return
        speeds = np.asarray(detections.data["speed_kmh"], dtype=np.float64)
        ids = np.asarray(detections.tracker_id)
        names = class_names(detections)
        for rule in speed_rules:
            for index in np.flatnonzero((ids != NO_TRACK_ID) & (speeds > rule.threshold)).tolist():
                if rule.watches(names[index]):
                    self._fire(
                        frame, rule, int(ids[index]), names[index], speed_kmh=round(float(speeds[index]), 2)
                    )
