"""The lines stage on scripted scenes with known crossings."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.frame import Batch
from engine.geometry.calibration import Calibration
from plugins.lines import LineCounter
from tests.conftest import REPO_ROOT
from tests.plugins.helpers_regions import context, events_of, linear, scene

# A horizontal line at y = 100 from x = 20 to x = 180; drawn left to right, so "in" is
# moving up the image and "out" moving down.
LINE = {"name": "gate", "start": [20, 100], "end": [180, 100], "in": "up", "out": "down"}


def run(stage: LineCounter, frames: list) -> list:
    stage.open(context())
    for frame in frames:
        stage(Batch.of([frame]))
    return frames


def hover(x: float, frames: int) -> list[tuple[float, float] | None]:
    """On the line: the anchor alternates 1 px above and below it every frame."""
    return [(x, 99.0 if i % 2 else 101.0) for i in range(frames)]


def test_known_crossings_are_counted_exactly_once_per_track() -> None:
    paths = {
        1: linear((50, 60), (50, 140), 40),  # down across the line: 1 down
        2: linear((80, 150), (80, 50), 40),  # up: 1 up (a truck)
        3: linear((110, 60), (110, 95), 10)
        + hover(110, 30)
        + linear((110, 95), (110, 60), 10),  # hovers, goes back: 0
        4: linear((140, 60), (140, 95), 10)
        + hover(140, 30)
        + linear((140, 105), (140, 150), 10),  # hovers, then down: 1
        5: linear((60, 60), (60, 140), 20)
        + linear((60, 140), (60, 60), 20),  # down and back up: counted once, down
        6: linear((195, 60), (195, 140), 40),  # beyond the line's end: 0
    }
    frames = scene(paths, classes={2: "truck"})
    stage = LineCounter(lines=[LINE], min_frames=2)
    run(stage, frames)
    crossings = events_of(frames, "line_crossed")
    assert sorted((e["track_id"], e["direction"]) for _, e in crossings) == [
        (1, "down"),
        (2, "up"),
        (4, "down"),
        (5, "down"),
    ]
    assert stage.summary()["lines"] == {
        "gate": {"up": {"total": 1, "truck": 1}, "down": {"total": 3, "car": 3}}
    }
    assert next(e for _, e in crossings if e["track_id"] == 2)["class_name"] == "truck"


def test_jitter_on_the_line_with_one_frame_threshold_counts_each_flip_once_per_track() -> None:
    # With min_frames 1 LineZone sees every flip, but a track still counts only once.
    frames = scene({1: linear((50, 60), (50, 95), 5) + hover(50, 20)})
    stage = LineCounter(lines=[LINE], min_frames=1)
    run(stage, frames)
    assert len(events_of(frames, "line_crossed")) == 1


def test_the_crossing_is_reported_on_the_frame_it_is_confirmed() -> None:
    path = [(50.0, 90.0 + 4 * i) for i in range(6)]  # y 90, 94, 98, 102, 106, 110
    frames = scene({1: path})
    run(LineCounter(lines=[LINE], min_frames=2), frames)
    # First below the line at frame 3 (y=102); confirmed on the second frame there.
    assert [index for index, _ in events_of(frames, "line_crossed")] == [4]


def test_untracked_detections_and_filtered_classes_are_not_counted() -> None:
    frames = scene(
        {-1: linear((50, 60), (50, 140), 20), 7: linear((90, 60), (90, 140), 20)}, classes={7: "person"}
    )
    stage = LineCounter(lines=[{**LINE, "classes": ["car"]}])
    run(stage, frames)
    assert events_of(frames, "line_crossed") == []


def test_sources_are_counted_apart() -> None:
    a = scene({1: linear((50, 60), (50, 140), 20)}, source_id="a")
    b = scene({1: linear((50, 140), (50, 60), 20)}, source_id="b")
    stage = LineCounter(lines=[LINE])
    stage.open(context())
    for fa, fb in zip(a, b, strict=True):
        stage(Batch.of([fa, fb]))
    summary = stage.summary()
    assert summary["by_source"]["a"]["gate"]["down"]["total"] == 1
    assert summary["by_source"]["b"]["gate"]["up"]["total"] == 1
    assert summary["lines"]["gate"] == {"up": {"total": 1, "car": 1}, "down": {"total": 1, "car": 1}}


def test_lines_in_metres_are_mapped_through_the_calibration() -> None:
    path = REPO_ROOT / "calibrations" / "highway_overpass.yaml"
    stage = LineCounter(lines=[{"name": "m", "start": [-3.0, 5.0], "end": [3.0, 5.0]}], calibration=str(path))
    stage.open(context(320, 240))
    expected = Calibration.load(path).world_to_image(np.array([[-3.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(stage._pixels[0], expected)


def test_drawing_happens_only_on_an_existing_canvas() -> None:
    frames = scene({1: linear((50, 60), (50, 140), 10)})
    frames[5].draw_target()
    run(LineCounter(lines=[LINE]), frames)
    assert frames[4].canvas is None
    assert frames[5].canvas is not None and frames[5].canvas.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lines": []}, "non-empty list"),
        ({"lines": [{"name": "a", "start": [0, 0]}]}, "missing end"),
        ({"lines": [{**LINE, "colour": 1}]}, "unexpected key"),
        ({"lines": [LINE, LINE]}, "used twice"),
        ({"lines": [{**LINE, "in": "x", "out": "x"}]}, "different labels"),
        ({"lines": [{**LINE, "start": [0, "a"]}]}, "points"),
        ({"lines": [LINE], "anchor": "feet"}, "anchor"),
        ({"lines": [LINE], "min_frames": 0}, "min_frames"),
    ],
)
def test_invalid_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LineCounter(**kwargs)
