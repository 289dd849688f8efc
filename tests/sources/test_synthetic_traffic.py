"""Synthetic traffic: camera geometry, kinematics, ground truth, rendering, the synthetic://
source, and the whole speed chain recovering true speeds within the accuracy targets."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import SourceError
from engine.frame import Batch
from engine.sources.synthetic import SyntheticTrafficSource, kept_frames, scene_from_uri
from engine.sources.synthetic_traffic import (
    CameraModel,
    RoadLayout,
    TrafficScene,
    Vehicle,
    follow_traffic,
    highway_scene,
)
from engine.stage import Context
from plugins.replay import ReplayDetector
from plugins.speed import SpeedEstimator
from plugins.track import ByteTrackStage
from tests.cli.test_cli import read_events, vistream

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


def _speed_errors(
    uri: str, tmp_path: Path, *, jitter_px: float, tracker: bool
) -> tuple[np.ndarray, dict[str, int]]:
    """Run source -> replay -> (track) -> speed; return reported minus true speeds and totals."""
    source = SyntheticTrafficSource(uri, source_id="syn")
    info = source.open()
    calibration = tmp_path / "synthetic.yaml"
    source.scene.calibration().save(calibration)
    context = Context(sources={"syn": info})
    stages = [ReplayDetector(jitter_px=jitter_px, seed=7, track_ids=not tracker)]
    if tracker:
        stages.append(ByteTrackStage())
    stages.append(SpeedEstimator(calibration=calibration, shift_statistic="off"))  # the shipped settings
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
    return np.asarray(errors), stages[-1].summary()["sources"]["syn"]["totals"]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area - inter)


@pytest.mark.parametrize("fps", [25, 60])
def test_speeds_recovered_within_the_targets(tmp_path: Path, fps: int) -> None:
    """1280x720, constant speeds 20-150 km/h, 2 px box jitter, exact calibration, one setting
    for every frame rate: MAE <= 1.0 km/h, p95 <= 2.5 km/h, nothing 10 km/h off. (Constant:
    no car-following either, whose braking behind slower vehicles, up to 6 m/s², gave p95
    2.6 km/h at 25 fps in this dense scene.)"""
    scene = f"fps={fps}&frames={40 * fps}&seed=11&vehicles=40&behaviours=0&following=0&render=0"
    uri = f"synthetic://traffic?{scene}"
    errors, totals = _speed_errors(uri, tmp_path, jitter_px=2.0, tracker=False)
    assert len(errors) > 1500
    absolute = np.abs(errors)
    assert absolute.mean() <= 1.0 and np.percentile(absolute, 95) <= 2.5 and absolute.max() <= 10.0
    assert totals["identity_splits"] == 0  # true ids: nothing to split


def test_with_bytetrack_ids_and_mixed_behaviours(tmp_path: Path) -> None:
    """The real tracker instead of true ids, vehicles accelerating and changing lanes: the
    reported speeds stay close to the truth (looser bound: a fit lags acceleration)."""
    uri = "synthetic://traffic?frames=450&seed=5&vehicles=16&render=0"
    errors, _ = _speed_errors(uri, tmp_path, jitter_px=1.0, tracker=True)
    assert len(errors) > 300
    assert np.abs(errors).mean() <= 1.5
    assert np.percentile(np.abs(errors), 99) <= 8.0


def test_no_vehicle_drives_through_another() -> None:
    """Dense traffic with braking and lane changes: footprints never overlap on the road in
    view (beyond it, behind the camera, vehicles are no longer simulated)."""
    scene = highway_scene(fps=10.0, frames=600, seed=4, vehicles=60)
    assert max(v.enter_s for v in scene.vehicles) < 80.0  # dense, still flowing
    near_y = scene.visible_y_range_m()[0]
    for frame in range(0, scene.frames, 2):
        t = scene.time_s(frame)
        active = [v for v in scene.vehicles if v.enter_s <= t and v.state(t, scene.road)[1] > near_y]
        states = np.array([v.state(t, scene.road)[:2] for v in active]).reshape(-1, 2)
        sizes = np.array([v.size_m[:2] for v in active]).reshape(-1, 2)
        for i in range(len(active)):
            dx = np.abs(states[i + 1 :, 0] - states[i, 0]) < (sizes[i + 1 :, 1] + sizes[i, 1]) / 2
            dy = np.abs(states[i + 1 :, 1] - states[i, 1]) < (sizes[i + 1 :, 0] + sizes[i, 0]) / 2
            assert not (dx & dy).any(), (frame, active[i].vehicle_id)


def test_one_scene_at_any_frame_rate() -> None:
    """The same URI at 25 and 60 fps: the same traffic, sampled at each rate."""
    slow = scene_from_uri("synthetic://traffic?fps=25&frames=100&seed=2&render=0")
    fast = scene_from_uri("synthetic://traffic?fps=60&frames=240&seed=2&render=0")
    assert [v.enter_s for v in slow.vehicles] == [v.enter_s for v in fast.vehicles]
    a, b = slow.truth(50), fast.truth(120)  # both at 2 s
    assert a.pts_ns == b.pts_ns == 2_000_000_000
    np.testing.assert_allclose(a.world_xy_m, b.world_xy_m)


def test_a_camera_bump_moves_the_boxes_not_the_calibration() -> None:
    steady = scene_from_uri("synthetic://traffic?frames=300&seed=2&render=0")
    bumped = scene_from_uri("synthetic://traffic?frames=300&seed=2&render=0&bump_s=5&bump_tilt=1")
    np.testing.assert_allclose(steady.truth(120).xyxy, bumped.truth(120).xyxy)  # before: the same
    after_steady, after_bumped = steady.truth(200), bumped.truth(200)
    (common,) = np.intersect1d(after_steady.vehicle_id, after_bumped.vehicle_id)[:1]
    a = after_steady.vehicle_id.tolist().index(common)
    b = after_bumped.vehicle_id.tolist().index(common)
    np.testing.assert_allclose(after_steady.world_xy_m[a], after_bumped.world_xy_m[b])  # the road: the same
    assert after_bumped.xyxy[b, 3] < after_steady.xyxy[a, 3] - 5.0  # tilted down: boxes move up the image
    np.testing.assert_allclose(steady.calibration().image_points, bumped.calibration().image_points)
    assert not np.array_equal(steady.render(200), bumped.render(200))


def _alarm_events(uri: str, tmp_path: Path) -> tuple[list[float], list[float]]:
    """Replay + speed with the camera-shift alarm; return final times and alarm times (s)."""
    source = SyntheticTrafficSource(uri, source_id="syn")
    info = source.open()
    calibration = tmp_path / "synthetic.yaml"
    source.scene.calibration().save(calibration)
    context = Context(sources={"syn": info})
    replay = ReplayDetector(jitter_px=1.0, seed=1, track_ids=True)
    speed = SpeedEstimator(calibration=calibration, shift_baseline_tracks=30, shift_window_tracks=15)
    replay.open(context)
    speed.open(context)
    finals, alarms = [], []
    for frame in source.frames():
        speed(replay(Batch([frame])))
        for event in frame.events:
            if event["type"] == "vehicle_speed_final":
                finals.append(frame.pts_ns / 1e9)
            elif event["type"] == "calibration_suspect":
                alarms.append(frame.pts_ns / 1e9)
    return finals, alarms


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 3])
def test_a_camera_bump_is_flagged_and_steady_scenes_are_not(tmp_path: Path, seed: int) -> None:
    """A 1° tilt at 45 s (speeds then 10-45 % off, by distance) raises calibration_suspect
    within 25 vehicles of the bump (13-22 measured over seeds 1, 3, 5); the same traffic
    without the bump raises nothing. Dense car-following traffic, 20-150 km/h, whose braking
    in view raised false alarms with the speed-profile statistic: the default ``width``
    statistic does not depend on speed."""
    uri = f"synthetic://traffic?fps=15&frames=1350&seed={seed}&vehicles=90&render=0"
    finals, alarms = _alarm_events(uri, tmp_path)
    assert len(finals) > 70 and alarms == []
    finals, alarms = _alarm_events(uri + "&bump_s=45&bump_tilt=1", tmp_path)
    (alarm,) = alarms
    assert alarm > 45.0 and sum(1 for t in finals if 45.0 <= t <= alarm) <= 25


def test_a_run_writes_every_vehicle_once_even_those_in_view_at_the_end(tmp_path: Path) -> None:
    """`vistream run` on a synthetic scene cut short by --max-frames: vehicles still in the
    zone at the end are in vehicles.csv and the summary, and no vehicle is written twice."""
    scene = scene_from_uri("synthetic://traffic?frames=300&seed=6&vehicles=14&render=0&width=640&height=360")
    scene.calibration().save(tmp_path / "cal.yaml")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "source: synthetic://traffic?frames=300&seed=6&vehicles=14&render=0&width=640&height=360\n"
        "stages:\n"
        "  - stage: replay\n    jitter_px: 1.0\n    track_ids: true\n"
        "  - stage: speed\n    calibration: cal.yaml\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = vistream(
        "run", "--pipeline", str(pipeline), "--out", str(out), "--quiet", "--no-video", "--max-frames", "200"
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "vehicles.csv").open(encoding="utf-8", newline="")))
    keys = [(r["track_id"], r["entry_pts_ns"]) for r in rows]
    assert len(keys) == len(set(keys)) >= 3
    reasons = {r["reason"] for r in rows}
    assert "end_of_stream" in reasons
    in_events = [
        e
        for record in read_events(out)
        for e in record.get("events", [])
        if e["type"] == "vehicle_speed_final"
    ]
    assert len(in_events) < len(rows)  # the rest were decided at the end: only the table has them
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["stages"]["speed"]["sources"]["synthetic"]["vehicles"]) == len(rows)


def test_a_fast_vehicle_follows_a_slow_one_instead_of_driving_through_it() -> None:
    """Car-following: a 120 km/h car entering 6 s behind a 40 km/h truck in the same lane
    catches up, brakes smoothly to the truck's speed and keeps a gap (Gipps' safe speed);
    a third vehicle's lane change into the truck's flank is called off."""
    road = RoadLayout(lanes=2)
    truck = Vehicle(vehicle_id=1, lane=0, enter_s=0.0, speed_kmh=40.0, start_y_m=200.0, kind="truck")
    car = Vehicle(vehicle_id=2, lane=0, enter_s=6.0, speed_kmh=120.0, start_y_m=300.0)
    beside = Vehicle(
        vehicle_id=3, lane=1, enter_s=0.0, speed_kmh=40.0, start_y_m=200.0, lane_change=(0.5, 2.0, 0.0)
    )
    followed = follow_traffic([truck, car, beside], road, travel_m=600.0)
    assert followed[2].lane_change is None  # no room beside the truck
    truck, car = followed[0], followed[1]
    gaps, speeds = [], []
    assert car.enter_s == pytest.approx(6.0)
    for t in np.arange(6.0, 40.0, 0.05):
        (_, y_truck, _, _), (_, y_car, _, v_car) = truck.state(t, road), car.state(t, road)
        gaps.append(y_car - y_truck - (truck.size_m[0] + car.size_m[0]) / 2)  # both drive to -y
        speeds.append(abs(v_car) * 3.6)
    assert min(gaps) > 1.0  # never through, never touching
    assert speeds[0] == pytest.approx(120.0, abs=0.5) and speeds[-1] == pytest.approx(40.0, abs=1.0)
    assert min(speeds) > 39.0  # no overshoot below the leader's speed
    decel = -np.diff(speeds) / 3.6 / 0.05
    assert decel.max() < 9.0  # it braked, it did not stop dead
    # The positions and the speeds of a followed vehicle agree (the truth speed is exact).
    times = np.arange(6.0, 14.0, 1 / 30)
    y = np.array([car.state(t, road)[1] for t in times])
    v = np.array([car.state(t, road)[3] for t in times])
    np.testing.assert_allclose(np.diff(y) * 30, (v[1:] + v[:-1]) / 2, atol=0.05)
