"""Synthetic traffic: camera geometry, kinematics, ground truth, rendering, the synthetic://
source, and the whole speed chain recovering true speeds within the accuracy targets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SourceError
from engine.frame import Batch
from engine.sources.synthetic import SyntheticTrafficSource, kept_frames
from engine.sources.synthetic_traffic import CameraModel, RoadLayout, TrafficScene, Vehicle, highway_scene
from engine.stage import Context
from plugins.replay import ReplayDetector
from plugins.speed import SpeedEstimator
from plugins.track import ByteTrackStage

ROAD = RoadLayout(lanes=3)


def test_ground_homography_matches_the_projection() -> None:
    camera = CameraModel()
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(0, 11, 50), rng.uniform(30, 120, 50), np.zeros(50)])
    pixels, depth = camera.project(ground)
    homography = camera.ground_homography()
    mapped = np.column_stack([ground[:, :2], np.ones(50)]) @ homography.T
    np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], pixels, atol=1e-6)
    assert (depth > 0).all()


@pytest.mark.parametrize(
    ("vehicle", "t_s", "expected_y", "expected_speed_ms"),
    [
        (Vehicle(1, 0, 0.0, 72.0, 100.0), 2.0, 60.0, 20.0),  # 20 m/s toward the camera
        (Vehicle(1, 0, 1.0, 36.0, 100.0, target_speed_kmh=72.0, acceleration_ms2=2.0), 6.0, 25.0, 20.0),
        (Vehicle(1, 0, 0.0, 36.0, 100.0, target_speed_kmh=0.0, acceleration_ms2=5.0), 10.0, 90.0, 0.0),
        (Vehicle(1, 0, 0.0, 36.0, 10.0, direction=1), 1.0, 20.0, 10.0),
    ],
)
def test_kinematics(vehicle: Vehicle, t_s: float, expected_y: float, expected_speed_ms: float) -> None:
    x, y, vx, vy = vehicle.state(t_s, ROAD)
    assert x == pytest.approx(ROAD.lane_center_m(0))
    assert y == pytest.approx(expected_y)
    assert math.hypot(vx, vy) == pytest.approx(expected_speed_ms)


def test_lane_change_keeps_the_speed_and_moves_one_lane() -> None:
    vehicle = Vehicle(1, 0, 0.0, 90.0, 200.0, lane_change=(1.0, 3.0, 1.0))
    xs = [vehicle.state(t, ROAD)[0] for t in (0.5, 2.5, 4.5)]
    assert xs[0] == pytest.approx(ROAD.lane_center_m(0)) and xs[2] == pytest.approx(ROAD.lane_center_m(1))
    _, _, vx, vy = vehicle.state(2.5, ROAD)
    assert abs(vx) > 1.0 and math.hypot(vx, vy) == pytest.approx(25.0)


def test_truth_boxes_and_flags() -> None:
    scene = TrafficScene(
        camera=CameraModel(),
        road=ROAD,
        fps=30.0,
        frames=100,
        vehicles=[
            Vehicle(1, 1, 0.0, 90.0, 60.0),
            Vehicle(2, 2, 2.0, 90.0, 60.0),
            Vehicle(3, 0, 0.0, 90.0, 31.0),
        ],
    )
    truth = scene.truth(0)
    assert truth.vehicle_id.tolist() == [1, 3]  # vehicle 2 enters at 2 s
    assert (
        (truth.xyxy[:, :2] >= 0).all()
        and (truth.xyxy[:, 2] <= 1280).all()
        and (truth.xyxy[:, 3] <= 720).all()
    )
    assert truth.truncated.tolist() == [False, True]  # vehicle 3 is cut by the bottom edge
    np.testing.assert_allclose(truth.speed_kmh, 90.0)
    assert scene.truth(90).vehicle_id.tolist().count(2) == 1
    assert scene.pts_ns(30) == 1_000_000_000


def test_rendering_shows_vehicles_where_the_truth_boxes_are() -> None:
    scene = TrafficScene(
        camera=CameraModel(), road=ROAD, frames=10, vehicles=[Vehicle(1, 1, 0.0, 90.0, 60.0)]
    )
    image = scene.render(0)
    assert image.shape == (720, 1280, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, scene.render(0))  # deterministic
    x1, y1, x2, y2 = scene.truth(0).xyxy[0].astype(int)
    changed = (image != scene.background()).any(axis=2)
    assert changed[y1:y2, x1:x2].mean() > 0.5
    assert changed.sum() == changed[y1 - 2 : y2 + 3, x1 - 2 : x2 + 3].sum()  # nothing outside the box


def test_exact_and_perturbed_calibrations() -> None:
    scene = highway_scene(frames=10)
    world = scene.rectangle()
    exact = scene.calibration()
    assert exact.width_m == pytest.approx(3.66) and exact.length_m == pytest.approx(3 * 12.19)
    ground = np.array([[world[0, 0] + 1.0, world[0, 1] + 5.0], [world[0, 0] + 2.5, world[0, 1] + 30.0]])
    pixels, _ = scene.camera.project(np.column_stack([ground, np.zeros(2)]))
    np.testing.assert_allclose(exact.image_to_world(pixels), ground - world[0], atol=1e-6)
    perturbed = scene.calibration(perturb_px=2.0, rng=np.random.default_rng(1))
    moved = np.linalg.norm(perturbed.image_points - exact.image_points, axis=1)
    np.testing.assert_allclose(moved, 2.0, atol=1e-9)


def test_source_frames_timestamps_and_drops() -> None:
    source = SyntheticTrafficSource(
        "synthetic://traffic?frames=40&width=320&height=180&seed=3", source_id="s"
    )
    info = source.open()
    assert (info.width, info.height, info.fps, info.live, info.frame_count) == (320, 180, 30.0, False, 40)
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(40))
    assert frames[1].pts_ns == round(1e9 / 30) and frames[0].image.shape == (180, 320, 3)
    dropped = SyntheticTrafficSource("synthetic://traffic?frames=40&drop=0.5&seed=3", source_id="d")
    dropped.open()
    kept = [f.pts_ns for f in dropped.frames()]
    assert len(kept) == len(kept_frames("synthetic://traffic?frames=40&drop=0.5&seed=3")) < 30
    assert max(np.diff(kept)) > round(1e9 / 30) + 1  # timestamps jump over the missing frames
    # The same URI always gives the same traffic; closing stops the frames.
    again = SyntheticTrafficSource("synthetic://traffic?frames=40&width=320&height=180&seed=3", source_id="s")
    assert [v.speed_kmh for v in again.scene.vehicles] == [v.speed_kmh for v in source.scene.vehicles]
    iterator = again.frames()
    next(iterator)
    again.close()
    assert list(iterator) == []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://people", "unknown synthetic scene"),
        ("synthetic://traffic?fps=0", "fps must be in"),
        ("synthetic://traffic?frames=ten", "frames must be int"),
        ("synthetic://traffic?colour=red", "unknown parameter 'colour'"),
        ("synthetic://traffic?speed_min=100&speed_max=50", "exceeds speed_max"),
        ("file://x.mp4", "not a synthetic"),
    ],
)
def test_bad_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        SyntheticTrafficSource(uri, source_id="s")


def _speed_errors(uri: str, tmp_path: Path, *, jitter_px: float, tracker: bool) -> tuple[np.ndarray, int]:
    """Run source -> replay -> (track) -> speed; return reported minus true speeds."""
    source = SyntheticTrafficSource(uri, source_id="syn")
    info = source.open()
    calibration = tmp_path / "synthetic.yaml"
    source.scene.calibration().save(calibration)
    context = Context(sources={"syn": info})
    stages = [ReplayDetector(jitter_px=jitter_px, seed=7, track_ids=not tracker)]
    if tracker:
        stages.append(ByteTrackStage())
    stages.append(SpeedEstimator(calibration=calibration, shift_statistic="off"))  # defaults: n = k = 15
    for stage in stages:
        stage.open(context)
    errors = []
    for frame in source.frames():
        batch = Batch([frame])
        for stage in stages:
            batch = stage(batch)
        truth = source.scene.truth(round(frame.pts_ns * source.scene.fps / 1e9))
        objects = frame.layers["objects"]
        reported = np.isfinite(objects.data["speed_kmh"])
        for box, speed in zip(objects.xyxy[reported], objects.data["speed_kmh"][reported], strict=True):
            # The truth of a detection is the vehicle whose box it overlaps most.
            overlap = _iou(box, truth.xyxy)
            errors.append(speed - truth.speed_kmh[int(np.argmax(overlap))])
    totals = stages[-1].summary()["sources"]["syn"]["totals"]
    return np.asarray(errors), totals["rejected_max_speed"] + totals["rejected_max_acceleration"]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area - inter)


def test_speeds_recovered_within_the_targets(tmp_path: Path) -> None:
    """1280x720, 30 fps, constant speeds 20-150 km/h, 2 px box jitter, exact calibration:
    MAE <= 1.0 km/h and p95 <= 2.5 km/h (the issue's targets)."""
    uri = "synthetic://traffic?frames=1200&seed=11&vehicles=40&behaviours=0&render=0"
    errors, _ = _speed_errors(uri, tmp_path, jitter_px=2.0, tracker=False)
    assert len(errors) > 1500
    absolute = np.abs(errors)
    assert absolute.mean() <= 1.0
    assert np.percentile(absolute, 95) <= 2.5


def test_with_bytetrack_ids_and_mixed_behaviours(tmp_path: Path) -> None:
    """The real tracker instead of true ids, vehicles accelerating and changing lanes: the
    reported speeds stay close to the truth (looser bound: the average lags acceleration)."""
    uri = "synthetic://traffic?frames=450&seed=5&vehicles=16&render=0"
    errors, _ = _speed_errors(uri, tmp_path, jitter_px=1.0, tracker=True)
    assert len(errors) > 300
    assert np.abs(errors).mean() <= 1.5
    assert np.percentile(np.abs(errors), 99) <= 8.0
