"""Annotator: draws on the canvas only, labels with id/class/extras, traces per source."""

from __future__ import annotations

from importlib.metadata import entry_points

import numpy as np
import pytest
import supervision as sv

from engine.errors import ConfigError
from engine.frame import Batch, Frame
from engine.stage import Context
from plugins.annotate import Annotator, format_extra
from plugins.track import ByteTrackStage
from tests.plugins.helpers_track import BOX_PX, OBJECTS, scene_frame, source_info

BACKGROUND = 40  # grey level of the synthetic frames


def _tracked_frames(count: int, *, source_id: str = "cam", seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    tracker = ByteTrackStage()
    tracker.open(Context(sources={source_id: source_info(source_id)}))
    frames = [scene_frame(i, rng, source_id=source_id, with_image=True) for i in range(count)]
    tracker(Batch.of(frames))
    return frames


def _window(canvas: np.ndarray, x: float, y: float, half: int = 3) -> np.ndarray:
    x, y = int(round(x)), int(round(y))
    return canvas[y - half : y + half + 1, x - half : x + half + 1]


def _trail_point(gt_id: int, position: int) -> tuple[float, float]:
    x0, y0, vx = OBJECTS[gt_id]
    return x0 + vx * position + BOX_PX / 2, y0 + BOX_PX / 2


def test_draws_on_the_canvas_and_never_on_the_image() -> None:
    frames = _tracked_frames(3)
    images = [frame.image.copy() for frame in frames]
    Annotator()(Batch.of(frames))
    for frame, image in zip(frames, images, strict=True):
        np.testing.assert_array_equal(frame.image, image)
        assert frame.canvas is not None and not np.shares_memory(frame.canvas, frame.image)
        for x1, y1, _, y2 in frame.layers["objects"].xyxy.astype(int):
            left_edge = frame.canvas[(y1 + y2) // 2, x1]
            assert (left_edge != BACKGROUND).any()  # a box is there
        assert (frame.canvas != frame.image).any(axis=2).mean() < 0.2


def test_labels_carry_id_class_confidence_and_extras() -> None:
    detections = sv.Detections(
        xyxy=np.zeros((3, 4), dtype=np.float32),
        confidence=np.array([0.871, 0.5, 0.25], dtype=np.float32),
        class_id=np.array([2, 0, 2]),
        tracker_id=np.array([12, -1, 3]),
        data={
            "class_name": np.array(["car", "person", "car"]),
            "speed_kmh": np.array([54.4, 3.0, np.nan]),
            "emotion": np.array(["", "happy", ""]),
        },
    )
    assert Annotator().labels(detections) == [
        "#12 car 0.87 54 km/h",
        "person 0.50 3 km/h happy",
        "#3 car 0.25",
    ]
    quiet = Annotator(show_confidence=False, extras=["emotion"])
    assert quiet.labels(detections) == ["#12 car", "person happy", "#3 car"]
    detections.tracker_id = None
    detections.data = {}
    assert Annotator().labels(detections) == ["2 0.87", "0 0.50", "2 0.25"]


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        ("speed_kmh", [54.4, float("nan")], ["54 km/h", ""]),
        ("distance_m", [3.21, 10.0], ["3.2 m", "10.0 m"]),
        ("emotion_confidence", [0.914, 0.5], ["0.91", "0.50"]),
        ("age", [31, 7], ["31", "7"]),
        ("landmarks", np.zeros((2, 5, 2)), ["", ""]),
        ("emotion", np.array(["sad", None], dtype=object), ["sad", ""]),
    ],
)
def test_format_extra(key: str, values: object, expected: list[str]) -> None:
    assert format_extra(key, values) == expected


def test_untracked_detections_of_a_tracked_layer_are_grey() -> None:
    frames = _tracked_frames(3)
    Annotator(trace_length=0)(Batch.of(frames))
    frame = frames[-1]
    objects = frame.layers["objects"]
    for (x1, y1, _, y2), track_id in zip(objects.xyxy.astype(int), objects.tracker_id, strict=True):
        left_edge = frame.canvas[(y1 + y2) // 2, x1]
        is_grey = bool((left_edge == 160).all())
        assert is_grey == (track_id == -1)


def test_traces_follow_tracks_and_restart_after_end_of_stream() -> None:
    frames = _tracked_frames(16)
    annotator = Annotator(trace_length=30)
    annotator(Batch.of(frames))
    last = frames[-1].canvas
    for gt_id in OBJECTS:  # 10 frames back the object was ~50 px away, outside its box
        assert (_window(last, *_trail_point(gt_id, 5)) != BACKGROUND).any(), gt_id

    plain = _tracked_frames(16)
    Annotator(trace_length=0)(Batch.of(plain))
    for gt_id in OBJECTS:
        assert (_window(plain[-1].canvas, *_trail_point(gt_id, 5)) == BACKGROUND).all(), gt_id

    annotator.end_of_stream("cam")
    restarted = _tracked_frames(16)[-1]  # same ids, same places: only a kept trace would show
    restarted.canvas = None
    annotator(Batch.of([restarted]))
    for gt_id in OBJECTS:
        assert (_window(restarted.canvas, *_trail_point(gt_id, 5)) == BACKGROUND).all(), gt_id


def test_sources_have_separate_traces() -> None:
    annotator = Annotator()
    annotator(Batch.of(_tracked_frames(16, source_id="a")))
    other = _tracked_frames(16, source_id="b")[-1]  # b's first annotated frame: one point
    annotator(Batch.of([other]))
    for gt_id in OBJECTS:
        assert (_window(other.canvas, *_trail_point(gt_id, 5)) == BACKGROUND).all(), gt_id


def test_empty_missing_and_untracked_layers_are_fine() -> None:
    image = np.full((48, 64, 3), BACKGROUND, dtype=np.uint8)
    frames = [
        Frame(source_id="cam", index=0, pts_ns=0, image=image.copy()),
        Frame(
            source_id="cam", index=1, pts_ns=1, image=image.copy(), layers={"objects": sv.Detections.empty()}
        ),
        Frame(
            source_id="cam",
            index=2,
            pts_ns=2,
            image=image.copy(),
            layers={"faces": sv.Detections(xyxy=np.array([[5.0, 5.0, 30.0, 30.0]]))},
        ),
    ]
    Annotator(layers=["objects", "faces"])(Batch.of(frames))
    np.testing.assert_array_equal(frames[0].canvas, image)
    np.testing.assert_array_equal(frames[1].canvas, image)
    assert (frames[2].canvas != image).any()


def _one_box(xyxy: list[float], *, height: int = 240, width: int = 320) -> Frame:
    frame = Frame(source_id="cam", index=0, pts_ns=0, image=np.zeros((height, width, 3), dtype=np.uint8))
    frame.layers["objects"] = sv.Detections(
        xyxy=np.array([xyxy], dtype=np.float32),
        confidence=np.array([0.41], dtype=np.float32),
        class_id=np.array([7]),
        tracker_id=np.array([4]),
        data={"class_name": np.array(["truck"]), "speed_kmh": np.array([113.2])},
    )
    return frame


def _label_pixels(canvas: np.ndarray, x1: int, x2: int, top: int, bottom: int) -> int:
    """Pixels of track 4's colour strictly inside a box's columns, between two rows."""
    color = sv.ColorPalette.DEFAULT.colors[4].as_bgr()
    region = canvas[top:bottom, x1 + 3 : x2 - 3]
    return int((region == np.array(color)).all(axis=2).sum())


def test_a_label_of_a_box_at_the_top_edge_stays_inside_the_picture() -> None:
    frame = _one_box([100, 0, 220, 80])
    Annotator(trace_length=0)(Batch.of([frame]))
    assert _label_pixels(frame.canvas, 100, 220, 3, 40) > 300  # the label's background, inside


def test_small_videos_are_drawn_scaled_up_with_readable_labels() -> None:
    """320x240 with min_height_px 720: the canvas is 960x720, the box drawn at 3x, the label
    text about 1/55 of the height (OpenCV scale 0.55, some 12 px glyphs); the image and the
    detections keep the source's pixels."""
    frame = _one_box([100, 100, 160, 140])
    image = frame.image.copy()
    annotator = Annotator(trace_length=5, min_height_px=720)
    annotator(Batch.of([frame]))
    assert frame.canvas.shape == (720, 960, 3) and annotator.scale_factor(240) == 3
    np.testing.assert_array_equal(frame.image, image)
    np.testing.assert_array_equal(frame.layers["objects"].xyxy, [[100, 100, 160, 140]])
    assert (frame.canvas[300:420, 300] != 0).any(axis=1).sum() > 100  # the box's left side at x = 300
    label_rows = np.flatnonzero(_label_pixels_by_row(frame.canvas, 300, 480))
    assert 15 <= len(label_rows) <= 40  # a label band tall enough to read, not a banner
    assert Annotator(min_height_px=720).scale_factor(720) == 1
    assert Annotator().scale_factor(144) == 1


def _label_pixels_by_row(canvas: np.ndarray, x1: int, x2: int) -> np.ndarray:
    color = sv.ColorPalette.DEFAULT.colors[4].as_bgr()
    return (canvas[:, x1 + 3 : x2 - 3] == np.array(color)).all(axis=2).sum(axis=1) > 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_height_px": 4},
        {"min_height_px": 720.0},
        {"layers": "objects"},
        {"layers": [""]},
        {"trace_length": -1},
        {"show_confidence": "yes"},
        {"extras": [3]},
        {"thickness": 0},
        {"text_scale": 0},
    ],
)
def test_invalid_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Annotator(**kwargs)  # type: ignore[arg-type]


def test_is_a_drawing_stage_registered_as_annotate() -> None:
    assert Annotator.draws is True
    (entry,) = entry_points(group="vistream.stages", name="annotate")
    assert entry.load() is Annotator
