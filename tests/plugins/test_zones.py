"""The zones stage: memberships, enter/leave events and dwell times against known values."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.frame import Batch
from plugins.zones import ZoneMonitor
from tests.plugins.helpers_regions import FPS, context, events_of, scene

SQUARE = {"name": "square", "polygon": [[50, 50], [150, 50], [150, 150], [50, 150]]}
RIGHT = {"name": "right", "polygon": [[100, 0], [200, 0], [200, 200], [100, 200]]}
OUT, IN, IN_BOTH = (20.0, 100.0), (80.0, 100.0), (120.0, 100.0)


def run(stage: ZoneMonitor, frames: list) -> list:
    stage.open(context())
    for frame in frames:
        stage(Batch.of([frame]))
    return frames


def stay(point: tuple[float, float], frames: int) -> list[tuple[float, float] | None]:
    return [point] * frames


def test_dwell_time_is_first_frame_outside_minus_first_frame_inside() -> None:
    # Inside on frames 10..39 (30 frames at 30 fps): 1.000 s; then outside.
    frames = scene({1: stay(OUT, 10) + stay(IN, 30) + stay(OUT, 20)})
    stage = ZoneMonitor(zones=[SQUARE], min_frames=3)
    run(stage, frames)
    entered = events_of(frames, "zone_entered")
    left = events_of(frames, "zone_left")
    assert [index for index, _ in entered] == [12]  # confirmed on its third frame inside...
    assert entered[0][1]["entered_pts_ns"] == frames[10].pts_ns  # ...dated to the first
    assert [index for index, _ in left] == [42]
    assert left[0][1]["dwell_s"] == pytest.approx(30 / FPS, abs=1e-9)
    assert left[0][1]["reason"] == "left"
    assert stage.summary()["zones"]["square"] == {
        "entries": 1,
        "exits": 1,
        "dwell_s": {"mean": 1.0, "median": 1.0, "max": 1.0},
    }


def test_current_zones_are_a_detection_column() -> None:
    frames = scene({1: stay(OUT, 3) + stay(IN_BOTH, 6), 2: stay(IN, 9)})
    run(ZoneMonitor(zones=[SQUARE, RIGHT], min_frames=3), frames)
    last = frames[-1].layers["objects"]
    zones = dict(zip(last.tracker_id.tolist(), last.data["zones"].tolist(), strict=True))
    assert zones == {1: ["square", "right"], 2: ["square"]}
    assert frames[0].layers["objects"].data["zones"].tolist() == [[], []]


def test_jitter_on_an_edge_makes_no_events() -> None:
    edge = [(52.0 if i % 2 else 48.0, 100.0) for i in range(40)]  # 2 px each side of x = 50
    frames = scene({1: edge})
    run(ZoneMonitor(zones=[SQUARE], min_frames=3), frames)
    assert events_of(frames, "zone_entered") == [] and events_of(frames, "zone_left") == []


def test_known_dwell_times_of_several_visits() -> None:
    # Track 1: two visits of 15 and 45 frames; track 2: one of 60 frames.
    path1 = stay(OUT, 5) + stay(IN, 15) + stay(OUT, 10) + stay(IN, 45) + stay(OUT, 5)
    path2 = stay(OUT, 2) + stay(IN, 60) + stay(OUT, 18)
    frames = scene({1: path1, 2: path2})
    stage = ZoneMonitor(zones=[SQUARE], min_frames=2)
    run(stage, frames)
    dwells = sorted((e["track_id"], e["dwell_s"]) for _, e in events_of(frames, "zone_left"))
    assert dwells == [(1, pytest.approx(0.5)), (1, pytest.approx(1.5)), (2, pytest.approx(2.0))]
    assert stage.summary()["zones"]["square"]["dwell_s"] == {"mean": 1.333, "median": 1.5, "max": 2.0}


def test_a_track_lost_inside_leaves_at_its_last_sighting() -> None:
    path = stay(OUT, 2) + stay(IN, 31) + [None] * 80  # last seen on frame 32
    frames = scene({1: path, 9: stay(OUT, 113)})
    run(ZoneMonitor(zones=[SQUARE], min_frames=1, lost_after_s=2.0), frames)
    ((index, left),) = events_of(frames, "zone_left")
    assert left["reason"] == "lost"
    assert left["left_pts_ns"] == frames[32].pts_ns
    assert left["dwell_s"] == pytest.approx(30 / FPS, abs=1e-3)
    assert frames[index].pts_ns - frames[32].pts_ns > 2e9


def test_class_filter() -> None:
    frames = scene({1: stay(IN, 10), 2: stay(IN, 10)}, classes={2: "person"})
    run(ZoneMonitor(zones=[{**SQUARE, "classes": ["person"]}], min_frames=1), frames)
    assert [e["track_id"] for _, e in events_of(frames, "zone_entered")] == [2]


def test_end_of_stream_counts_open_visits_in_the_summary() -> None:
    frames = scene({1: stay(IN, 31)})
    stage = ZoneMonitor(zones=[SQUARE], min_frames=1)
    run(stage, frames)
    stage.end_of_stream("cam0")
    assert stage.summary()["zones"]["square"]["dwell_s"]["max"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 1]]}]}, "at least 3"),
        ({"zones": [SQUARE], "lost_after_s": 0}, "lost_after_s"),
        ({"zones": [{**SQUARE, "classes": "car"}]}, "classes"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ZoneMonitor(**kwargs)
