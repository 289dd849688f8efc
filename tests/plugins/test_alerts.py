"""Alert rules: speed, dwell and line rules fire once per track."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.frame import Batch
from plugins.alerts import AlertRules
from plugins.lines import LineCounter
from plugins.zones import ZoneMonitor
from tests.plugins.helpers_regions import context, events_of, linear, scene


def test_rules_fire_once_per_track() -> None:
    frames = scene(
        {1: linear((50, 60), (50, 140), 60), 2: [(120.0, 100.0)] * 60, 3: linear((150, 140), (150, 60), 60)},
        classes={3: "truck"},
    )
    for frame in frames:  # track 1 speeds up past 100 km/h on frame 30
        detections = frame.layers["objects"]
        speed = np.where(detections.tracker_id == 1, 70.0 + frame.index, np.nan)
        detections.data["speed_kmh"] = speed
    zones = ZoneMonitor(
        zones=[{"name": "z", "polygon": [[100, 50], [140, 50], [140, 150], [100, 150]]}], min_frames=1
    )
    lines = LineCounter(
        lines=[{"name": "l", "start": [0, 100], "end": [200, 100], "in": "up", "out": "down"}]
    )
    alerts = AlertRules(
        rules=[
            {"name": "fast", "speed_above_kmh": 100},
            {"name": "loiter", "zone": "z", "dwell_above_s": 1.0},
            {"name": "truck_up", "line": "l", "direction": "up", "classes": ["truck"]},
            {"name": "any_down", "line": "l", "direction": "down"},
        ]
    )
    for stage in (zones, lines, alerts):
        stage.open(context())
    for frame in frames:
        for stage in (zones, lines, alerts):
            stage(Batch.of([frame]))
    fired = [(index, e["rule"], e["track_id"]) for index, e in events_of(frames, "alert")]
    assert sorted(rule_track for _, *rule_track in fired) == [
        ["any_down", 1],
        ["fast", 1],
        ["loiter", 2],
        ["truck_up", 3],
    ]
    assert next(index for index, rule, _ in fired if rule == "fast") == 31
    assert next(index for index, rule, _ in fired if rule == "loiter") == 31  # > 1.0 s after frame 0
    assert alerts.summary() == {"alerts": {"fast": 1, "loiter": 1, "truck_up": 1, "any_down": 1}}


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "x"},
        {"name": "x", "speed_above_kmh": 1, "line": "l"},
        {"name": "x", "dwell_above_s": 3},
        {"name": "x", "speed_above_kmh": -1},
    ],
)
def test_invalid_rules_are_refused(rule: dict) -> None:
    with pytest.raises(ConfigError):
        AlertRules(rules=[rule])
