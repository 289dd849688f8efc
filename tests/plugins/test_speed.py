"""SpeedEstimator: time-based fits at any frame rate, identity guard, final speeds, zone, alarm."""

from __future__ import annotations

import math
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import CalibrationError, ConfigError, StageError
from engine.frame import Batch, Frame
from engine.stage import Context
from plugins.speed import SpeedEstimator
from plugins.speed_fit import VehiclePath, choose_window
from tests.plugins.helpers_speed import (
    BOX_H,
    HEIGHT,
    context,
    tracked_frame,
    write_top_down_calibration,
)

FPS = 30.0


def _stage(tmp_path: Path, **kwargs: Any) -> SpeedEstimator:
    calibration = write_top_down_calibration(tmp_path / "top_down.yaml")
    stage = SpeedEstimator(calibration=calibration, **{"shift_statistic": "off", **kwargs})
    stage.open(context("cam"))
    return stage


def _run(stage: SpeedEstimator, frames: list[Frame]) -> list[Frame]:
    for frame in frames:
        stage(Batch([frame]))
    return frames


def _speeds(frames: list[Frame], track_id: int) -> list[tuple[int, float]]:
    """(frame index, reported km/h) of one track, NaN included."""
    rows = []
    for frame in frames:
        objects = frame.layers["objects"]
        for tid, speed in zip(objects.tracker_id.tolist(), objects.data["speed_kmh"].tolist(), strict=True):
            if tid == track_id:
                rows.append((frame.index, speed))
    return rows


def _first_speed_frame(frames: list[Frame], track_id: int) -> int:
    return next(index for index, speed in _speeds(frames, track_id) if not math.isnan(speed))


def _events(frames: list[Frame], kind: str) -> list[tuple[int, dict[str, Any]]]:
    return [(frame.index, event) for frame in frames for event in frame.events if event["type"] == kind]


def _straight(start_y_m: float, speed_ms: float, t_s: float, x_m: float = 5.0) -> list[list[float]]:
    return [[x_m, start_y_m + speed_ms * t_s]]


def _drive(
    fps: float, speed_ms: float, *, seconds: float, track_id: int = 1, x_m: float = 5.0, y0_m: float = 1.0
) -> list[Frame]:
    """One vehicle at constant speed along world y, one frame every 1/fps."""
    count = int(seconds * fps)
    return [
        tracked_frame(i, round(i / fps * 1e9), [track_id], np.array([[x_m, y0_m + speed_ms * i / fps]]))
        for i in range(count)
    ]


@pytest.mark.parametrize("fps", [25.0, 30.0, 60.0])
def test_one_setting_serves_every_frame_rate(tmp_path: Path, fps: float) -> None:
    """Windows are seconds: the first speed comes after about the same time at 25, 30 and
    60 fps (not the same frame count), and it is exact for exact positions."""
    stage = _stage(tmp_path)
    frames = _run(stage, _drive(fps, 12.0, seconds=1.2))
    first = _first_speed_frame(frames, 1)
    assert 0.15 <= first / fps <= 0.3  # min_window_s 0.2 s, whatever the frame rate
    shown = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    np.testing.assert_allclose(shown, 12.0 * 3.6, atol=1e-6)


def test_far_noisy_positions_wait_for_enough_travel(tmp_path: Path) -> None:
    """With 4 px box noise the first speed waits until the fit's predicted 95 % error is
    within the budget: later than for clean boxes, and then within that budget."""
    rng = np.random.default_rng(3)
    quick = _run(_stage(tmp_path), _drive(30.0, 10.0, seconds=1.5))
    noisy_frames = _drive(30.0, 10.0, seconds=1.5)
    for frame in noisy_frames:
        frame.layers["objects"].xyxy += rng.normal(0.0, 4.0, size=(1, 4)).astype(np.float32)
    noisy = _run(_stage(tmp_path, box_noise_px=4.0), noisy_frames)
    assert _first_speed_frame(noisy, 1) > _first_speed_frame(quick, 1)
    shown = np.array([s for _, s in _speeds(noisy, 1) if not math.isnan(s)])
    assert len(shown) > 10 and np.abs(shown - 36.0).max() < 4.0


def test_timing_comes_from_pts_when_frames_are_dropped(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    kept = [i for i in range(40) if i % 3 != 1]  # every third frame dropped
    frames = [
        tracked_frame(i, round(i / FPS * 1e9), [1], np.array(_straight(1.0, 9.0, i / FPS))) for i in kept
    ]
    _run(stage, frames)
    shown = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    assert shown and np.allclose(shown, 9.0 * 3.6, atol=1e-6)


def test_irregular_timestamps_give_exact_speeds(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.uniform(0.02, 0.05, size=40))
    frames = [
        tracked_frame(i, round(t * 1e9), [1], np.array(_straight(1.0, 11.0, t))) for i, t in enumerate(times)
    ]
    _run(stage, frames)
    shown = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    assert shown and np.allclose(shown, 11.0 * 3.6, atol=1e-6)


def test_a_one_frame_swap_is_held_back_not_blended(tmp_path: Path) -> None:
    """One box of another vehicle (a lane over, slower) under this track's id: not used, no
    speed shown on it, no split; the speeds stay exact."""
    stage = _stage(tmp_path)
    frames = _drive(FPS, 20.0, seconds=0.9, x_m=2.0)
    frames[15].layers["objects"].xyxy[:] = (
        tracked_frame(0, 0, [1], np.array([[5.6, 4.0]])).layers["objects"].xyxy
    )
    _run(stage, frames)
    speeds = dict(_speeds(frames, 1))
    assert math.isnan(speeds[15])
    shown = [s for i, s in speeds.items() if not math.isnan(s)]
    np.testing.assert_allclose(shown, 72.0, atol=1e-6)
    totals = stage.summary()["sources"]["cam"]["totals"]
    assert totals["outliers"] == 1 and totals["identity_splits"] == 0
    assert not _events(frames, "track_identity_split")


def test_an_id_swap_splits_the_speed_history(tmp_path: Path) -> None:
    """Track 1 follows a car at 72 km/h, then (frame 15 on) a van at 18 km/h in the next
    lane: no speed between the two is ever shown, the first vehicle's final speed is issued
    at the split and the second gets its own."""
    stage = _stage(tmp_path, exit_after_s=0.0)
    frames = []
    for i in range(40):
        t = i / FPS
        xy = [2.0, 1.0 + 20.0 * t] if i < 15 else [5.6, 6.0 + 5.0 * (t - 0.5)]
        frames.append(tracked_frame(i, round(t * 1e9), [1], np.array([xy])))
    _run(stage, frames)
    stage.end_of_stream("cam")
    shown = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    assert all(abs(s - 72.0) < 0.5 or abs(s - 18.0) < 0.5 for s in shown)
    assert any(abs(s - 18.0) < 0.5 for s in shown)
    ((split_frame, split),) = _events(frames, "track_identity_split")
    assert split_frame == 15 + 2 and split["track_id"] == 1 and split["jump_m"] > 3
    vehicles = stage.summary()["sources"]["cam"]["vehicles"]
    assert [v["reason"] for v in vehicles] == ["identity_split", "end_of_stream"]
    assert vehicles[0]["speed_kmh"] == pytest.approx(72.0, abs=0.01) and vehicles[0]["points"] == 15
    assert vehicles[1]["speed_kmh"] == pytest.approx(18.0, abs=0.01) and vehicles[1]["segment"] == 2
    assert stage.summary()["sources"]["cam"]["totals"]["identity_splits"] == 1


def test_a_box_whose_lower_part_is_hidden_is_the_same_vehicle(tmp_path: Path) -> None:
    """A car in front hides this car's wheels for 8 frames: the boxes keep their top and
    lose their lower part, so the anchor jumps up the road. They are skipped (counted as
    occluded), not a new vehicle: one final speed, exact, no split."""
    stage = _stage(tmp_path, exit_after_s=0.0)
    frames = _drive(FPS, 20.0, seconds=1.2)
    for frame in frames[15:23]:
        frame.layers["objects"].xyxy[:, 3] -= 0.4 * BOX_H
    _run(stage, frames)
    stage.end_of_stream("cam")
    speeds = dict(_speeds(frames, 1))
    assert all(math.isnan(speeds[i]) for i in range(15, 23))
    shown = [s for s in speeds.values() if not math.isnan(s)]
    np.testing.assert_allclose(shown, 72.0, atol=1e-6)
    summary = stage.summary()["sources"]["cam"]
    assert summary["totals"]["occluded"] == 8 and summary["totals"]["identity_splits"] == 0
    ((vehicle,),) = [summary["vehicles"]]
    assert vehicle["speed_kmh"] == pytest.approx(72.0, abs=0.01)


def test_a_box_that_changes_size_at_once_is_another_vehicle(tmp_path: Path) -> None:
    """Same road position, but the box is suddenly twice as tall (a truck took the id)."""
    stage = _stage(tmp_path)
    frames = _drive(FPS, 10.0, seconds=0.8)
    for frame in frames[12:]:
        frame.layers["objects"].xyxy[:, 1] -= 30.0
    _run(stage, frames)
    ((_, split),) = _events(frames, "track_identity_split")
    assert split["reason"] == "box_size"


def test_final_speed_when_the_vehicle_leaves_the_zone(tmp_path: Path) -> None:
    """Crossing the 20 m zone at 15 m/s, then seen beyond it: the final speed (exact, with
    its interval, entry and exit times, points, voted class) is issued once it has been out
    for exit_after_s."""
    stage = _stage(tmp_path, exit_after_s=0.1)
    frames = _run(stage, _drive(FPS, 15.0, seconds=1.6, y0_m=0.5))
    finals = _events(frames, "vehicle_speed_final")
    ((index, final),) = finals
    inside = [i for i, f in enumerate(frames) if np.isfinite(f.layers["objects"].data["world_xy_m"]).all()]
    assert index == inside[-1] + 1 + round(0.1 * FPS)
    assert final["speed_kmh"] == pytest.approx(54.0, abs=0.01)
    low, high = final["speed_ci95_kmh"]
    assert low <= 54.0 <= high and high - low < 1.0
    assert final["points"] == len(inside) and final["class_name"] == "car" and final["layer"] == "objects"
    assert (
        final["entry_pts_ns"] == frames[inside[0]].pts_ns
        and final["exit_pts_ns"] == frames[inside[-1]].pts_ns
    )
    assert final["reason"] == "left_zone" and final["max_speed_kmh"] == pytest.approx(54.0, abs=0.01)
    assert stage.summary()["sources"]["cam"]["vehicles"] == [final]


def test_final_speed_of_an_accelerating_vehicle_is_its_mean_speed(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    frames = []
    for i in range(40):
        t = i / FPS
        frames.append(tracked_frame(i, round(t * 1e9), [9], np.array([[5.0, 1.0 + 8.0 * t + 3.0 * t * t]])))
    _run(stage, frames)
    stage.end_of_stream("cam")
    (final,) = stage.summary()["sources"]["cam"]["vehicles"]
    duration = 39 / FPS
    assert final["speed_kmh"] == pytest.approx((8.0 + 3.0 * duration) * 3.6, abs=0.05)  # v at mid-time
    assert final["max_speed_kmh"] > final["speed_kmh"]


@pytest.mark.parametrize("fps", [25.0, 30.0, 60.0])
def test_a_braking_vehicle_is_followed_without_lag(tmp_path: Path, fps: float) -> None:
    """Hard braking (6 m/s², 1 px box noise): speeds are shown through it and track the
    speed of that frame, not the speed of the window's mean time, 0.1-0.3 s earlier
    (a line alone would be 2-6 km/h too fast)."""
    rng = np.random.default_rng(5)
    frames, truth = [], {}
    for i in range(int(1.0 * fps)):
        t = i / fps
        frame = tracked_frame(i, round(t * 1e9), [4], np.array([[5.0, 1.0 + 18.0 * t - 3.0 * t * t]]))
        frame.layers["objects"].xyxy += rng.normal(0.0, 1.0, size=(1, 4)).astype(np.float32)
        frames.append(frame)
        truth[i] = (18.0 - 6.0 * t) * 3.6
    shown = [(i, s) for i, s in _speeds(_run(_stage(tmp_path, box_noise_px=1.0), frames), 4) if s == s]
    errors = np.array([s - truth[i] for i, s in shown])
    assert len(shown) >= 0.6 * len(frames)
    assert abs(errors.mean()) < 1.0 and np.abs(errors).max() < 4.0


def test_the_window_counts_the_lag_of_an_accelerating_vehicle() -> None:
    """choose_window: the shortest stretch within the target; when none is, the one of least
    predicted error: the whole path for a constant speed, a shorter one (less lag) for an
    uncertain acceleration, none when the lag alone exceeds the limit."""
    t = np.arange(60) / 30.0
    var = np.full(60, 0.05**2)
    kwargs = {"scale": 1.0, "min_span_s": 0.2, "min_points": 8}
    assert choose_window(t, var, acceleration_ms2=0.0, target_ms=0.3, limit_ms=0.7, **kwargs) == 49
    assert choose_window(t, var, acceleration_ms2=0.0, target_ms=0.01, limit_ms=0.7, **kwargs) == 0
    braking = choose_window(t, var, acceleration_ms2=1.0, target_ms=0.01, limit_ms=0.7, **kwargs)
    assert braking is not None and 20 < braking < 52  # at least min_points, less than the path
    assert choose_window(t, var, acceleration_ms2=10.0, target_ms=0.3, limit_ms=0.7, **kwargs) is None


def test_final_speed_when_the_track_is_lost(tmp_path: Path) -> None:
    stage = _stage(tmp_path, forget_after_s=0.5)
    frames = _drive(FPS, 10.0, seconds=0.5)
    frames += [tracked_frame(15 + i, round((0.5 + i / FPS) * 1e9), [], np.zeros((0, 2))) for i in range(30)]
    _run(stage, frames)
    ((index, final),) = _events(frames, "vehicle_speed_final")
    assert final["reason"] == "track_lost" and final["speed_kmh"] == pytest.approx(36.0, abs=0.01)
    assert 14 + 0.5 * FPS <= index <= 14 + 0.75 * FPS + 2


def test_no_final_is_lost_at_the_end_of_a_file(tmp_path: Path) -> None:
    """A source that declares its frame count gets its finals on its last frame; one that
    does not gets them at end_of_stream: in the summary, and on its next frame if it restarts."""
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    counted = SpeedEstimator(calibration=calibration, shift_statistic="off")
    info = context("cam").sources["cam"]
    counted.open(Context(sources={"cam": replace(info, frame_count=20)}))
    frames = _run(counted, _drive(FPS, 10.0, seconds=20 / FPS))
    assert [i for i, _ in _events(frames, "vehicle_speed_final")] == [19]

    stage = _stage(tmp_path)
    frames = _run(stage, _drive(FPS, 10.0, seconds=20 / FPS))
    assert not _events(frames, "vehicle_speed_final")
    stage.end_of_stream("cam")
    (final,) = stage.summary()["sources"]["cam"]["vehicles"]
    assert final["reason"] == "end_of_stream" and final["speed_kmh"] == pytest.approx(36.0, abs=0.01)
    restart = _run(stage, _drive(FPS, 10.0, seconds=2 / FPS))
    assert restart[0].events == [final]


def test_zone_border_and_untracked_detections(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    frame = tracked_frame(0, 0, [1, -1, 2, 3], np.array([[5.0, 5.0], [6.0, 8.0], [-3.0, 5.0], [8.0, 0.0]]))
    objects = frame.layers["objects"]
    objects.xyxy[3, 3] = HEIGHT - 0.5  # this box is cut by the bottom edge: its anchor is not the road
    _run(stage, [frame])
    world = frame.layers["objects"].data["world_xy_m"]
    assert world.shape == (4, 2)
    np.testing.assert_allclose(world[0], [5.0, 5.0], atol=1e-4)
    np.testing.assert_allclose(world[1], [6.0, 8.0], atol=1e-4)  # untracked: a position, no speed
    assert np.isnan(world[2]).all() and np.isnan(world[3]).all()
    assert np.isnan(frame.layers["objects"].data["speed_kmh"]).all()


def test_mask_polygon_limits_the_zone(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(
        tmp_path / "masked.yaml", mask=[[100, 440], [200, 440], [200, 40], [100, 40]]
    )
    stage = SpeedEstimator(calibration=calibration, shift_statistic="off")
    stage.open(context("cam"))
    frame = tracked_frame(0, 0, [1, 2], np.array([[2.0, 5.0], [8.0, 5.0]]))  # x = 8 m is right of the mask
    _run(stage, [frame])
    world = frame.layers["objects"].data["world_xy_m"]
    assert np.isfinite(world[0]).all() and np.isnan(world[1]).all()


def test_needs_tracker_ids_and_accepts_empty_layers(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    empty = tracked_frame(0, 0, [], np.zeros((0, 2)))
    _run(stage, [empty])
    assert empty.layers["objects"].data["speed_kmh"].shape == (0,)
    assert empty.layers["objects"].data["world_xy_m"].shape == (0, 2)
    untracked = tracked_frame(1, 33_000_000, [1], np.array([[5.0, 5.0]]))
    untracked.layers["objects"].tracker_id = None
    with pytest.raises(StageError, match="put a track stage before speed"):
        stage(Batch([untracked]))


def test_lane_changes_keep_the_true_speed(tmp_path: Path) -> None:
    """Both axes are used: a diagonal move at 20 m/s along and 1.5 m/s across."""
    stage = _stage(tmp_path)
    frames = [
        tracked_frame(i, round(i / FPS * 1e9), [5], np.array([[2.0 + 1.5 * i / FPS, 1.0 + 20 * i / FPS]]))
        for i in range(25)
    ]
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 5) if not math.isnan(s)]
    np.testing.assert_allclose(reported, math.hypot(20.0, 1.5) * 3.6, rtol=1e-6)


def test_a_reused_id_after_a_gap_is_a_new_vehicle(tmp_path: Path) -> None:
    stage = _stage(tmp_path, forget_after_s=1.0)
    first = _drive(FPS, 12.0, seconds=8 / FPS)
    # Three seconds later the tracker hands out id 1 again, to another vehicle, elsewhere.
    later = [
        tracked_frame(8 + i, round((3.0 + i / FPS) * 1e9), [1], np.array([[5.0, 15.0 - 9.0 * i / FPS]]))
        for i in range(10)
    ]
    _run(stage, first + later)
    speeds = _speeds(later, 1)
    assert math.isnan(speeds[0][1])  # a new path: no speed yet
    assert speeds[-1][1] == pytest.approx(9.0 * 3.6)
    stage.end_of_stream("cam")
    vehicles = stage.summary()["sources"]["cam"]["vehicles"]
    assert [round(v["speed_kmh"]) for v in vehicles] == [43, 32]


def test_sources_are_independent(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = SpeedEstimator(calibration=calibration, shift_statistic="off")
    stage.open(context("a", "b"))
    frames = []
    for i in range(12):
        frames.append(
            tracked_frame(i, round(i / FPS * 1e9), [1], np.array([[5.0, 1.0 + 0.5 * i]]), source_id="a")
        )
        frames.append(
            tracked_frame(i, round(i / FPS * 1e9), [1], np.array([[5.0, 1.0 + 0.2 * i]]), source_id="b")
        )
    stage(Batch(frames))
    last_a, last_b = frames[-2].layers["objects"], frames[-1].layers["objects"]
    assert last_a.data["speed_kmh"][0] == pytest.approx(0.5 * FPS * 3.6)
    assert last_b.data["speed_kmh"][0] == pytest.approx(0.2 * FPS * 3.6)


def _traffic_frames(speeds_ms: list[float], start_index: int, first_id: int) -> list[Frame]:
    """One vehicle after another at the given speeds, 4 frames in the zone, then one beside it."""
    frames = []
    for number, speed in enumerate(speeds_ms):
        for step in range(5):
            index = start_index + number * 5 + step
            xy = [5.0 if step < 4 else 12.0, 1.0 + speed * step / FPS]
            frames.append(tracked_frame(index, round(index / FPS * 1e9), [first_id + number], np.array([xy])))
    return frames


@pytest.mark.parametrize("statistic", ["median_ratio", "ks"])
def test_camera_shift_alarm_fires_once_per_excursion(tmp_path: Path, statistic: str) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = SpeedEstimator(
        calibration=calibration,
        exit_after_s=0.0,
        shift_statistic=statistic,
        shift_baseline_tracks=20,
        shift_window_tracks=10,
    )
    stage.open(context("cam"))
    rng = np.random.default_rng(5)
    normal = lambda count: list(rng.normal(25.0, 1.5, size=count))  # noqa: E731
    phases = [
        normal(20),
        normal(15),
        [1.4 * v for v in normal(15)],
        normal(15),
        [1.4 * v for v in normal(15)],
    ]
    frames, next_id = [], 1
    for speeds in phases:
        frames += _traffic_frames(speeds, len(frames), next_id)
        next_id += len(speeds)
    _run(stage, frames)
    events = _events(frames, "calibration_suspect")
    assert len(events) == 2  # one per moved-camera phase, not one per frame
    phase_start = [20 * 5 + 15 * 5, 20 * 5 + 15 * 5 * 3]
    for (index, event), start in zip(events, phase_start, strict=True):
        assert start <= index < start + 15 * 5
        assert event["type"] == "calibration_suspect" and event["statistic"] == statistic
        assert event["source_id"] == "cam" and event["recent_median_kmh"] > event["baseline_median_kmh"]
    assert stage.summary()["sources"]["cam"]["totals"]["calibration_suspect_events"] == 2


def test_far_near_width_ratio_takes_the_noisier_half_as_far() -> None:
    """The width alarm's sample: median width of the far half (noisier positions) over the
    near half's, whatever the order in time; None without 4 widths in each half."""

    def path(far_first: bool, far_width: float, widths_known: bool = True) -> VehiclePath:
        vehicle = VehiclePath(0)
        for i in range(12):
            far = (i < 6) == far_first
            cov = np.eye(2) * (0.09 if far else 0.01)
            width = (far_width if far else 1.8) if widths_known or i % 3 == 0 else float("nan")
            vehicle.add(round(i / FPS * 1e9), np.array([0.0, 20.0 * i / FPS]), cov, width)
        return vehicle

    assert path(True, 1.98).far_near_width_ratio() == pytest.approx(1.1)
    assert path(False, 1.98).far_near_width_ratio() == pytest.approx(1.1)
    assert path(True, 1.98, widths_known=False).far_near_width_ratio() is None


def test_camera_shift_alarm_can_be_off(tmp_path: Path) -> None:
    stage = _stage(tmp_path, exit_after_s=0.0, shift_baseline_tracks=5, shift_window_tracks=5)
    frames = _traffic_frames([25.0] * 5 + [40.0] * 10, 0, 1)
    _run(stage, frames)
    assert len(_events(frames, "vehicle_speed_final")) == 15
    assert not _events(frames, "calibration_suspect")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window_s": 0}, "window_s"),
        ({"min_window_s": 3.0}, "min_window_s"),
        ({"speed_error_kmh": 2.0, "first_speed_error_kmh": 1.0}, "first_speed_error_kmh"),
        ({"box_noise_px": -1}, "box_noise_px"),
        ({"anchor": "feet"}, "anchor must be one of"),
        ({"max_speed_kmh": 0}, "max_speed_kmh"),
        ({"max_acceleration_ms2": float("inf")}, "max_acceleration_ms2"),
        ({"split_after_points": 0}, "split_after_points"),
        ({"min_final_points": 1}, "min_final_points"),
        ({"border_margin_px": -1}, "border_margin_px"),
        ({"shift_statistic": "mean"}, "shift_statistic"),
        ({"shift_statistic": "median_ratio", "shift_threshold": 0.8}, "ratio > 1"),
        ({"shift_statistic": "ks", "shift_threshold": 1.5}, "p-value"),
        ({"calibration": 12}, "calibration must be a path"),
    ],
)
def test_constructor_validates(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpeedEstimator(**{"calibration": tmp_path / "c.yaml", **arguments})


def test_open_checks_the_calibration_against_the_sources(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = SpeedEstimator(calibration=calibration)
    with pytest.raises(CalibrationError, match="delivers 640x480"):
        stage.open(context("cam", width=640, height=480))
    with pytest.raises(CalibrationError, match="cannot read"):
        SpeedEstimator(calibration=tmp_path / "missing.yaml").open(context("cam"))
    stage.open(context())  # sizes unknown at open: checked on the first frame
    wrong = tracked_frame(0, 0, [1], np.array([[5.0, 5.0]]), image=np.zeros((48, 64, 3), dtype=np.uint8))
    with pytest.raises(CalibrationError, match="delivers 64x48"):
        stage(Batch([wrong]))


def test_registered_and_shown_by_the_annotator() -> None:
    (entry,) = [e for e in entry_points(group="vistream.stages") if e.name == "speed"]
    assert entry.load() is SpeedEstimator
    from plugins.annotate import format_extra

    assert format_extra("speed_kmh", np.array([np.nan, 54.4])) == ["", "54 km/h"]


def test_the_shipped_traffic_pipeline_binds(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.config import load_pipeline

    monkeypatch.delenv("VISTREAM_CAMERA", raising=False)
    spec = load_pipeline("traffic")
    stages = {s.name: s for s in spec.stages}
    assert list(stages) == ["detect", "track", "speed", "grid", "annotate"]
    speed = stages["speed"].build()
    assert isinstance(speed, SpeedEstimator)
    assert speed.calibration_path.name == "highway_overpass.yaml" and speed.calibration_path.is_file()
