"""SpeedEstimator: per-track windows, timestamps, rejections, zone, summary, camera-shift alarm."""

from __future__ import annotations

import math
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import CalibrationError, ConfigError, StageError
from engine.frame import Batch, Frame
from plugins.speed import SpeedEstimator
from plugins.speed_alarm import ks_pvalue
from tests.plugins.helpers_speed import (
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


def _straight(start_y_m: float, speed_ms: float, t_s: float, x_m: float = 5.0) -> list[float]:
    return [x_m, start_y_m + speed_ms * t_s]


def test_windows_start_at_each_tracks_own_first_frame(tmp_path: Path) -> None:
    """n = 4, consecutive windows: a track first seen at frame 3 measures at 7, 11, 15 (not 8, 12)."""
    stage = _stage(tmp_path, window_frames=4, window_stride=None, smoothing_window=1)
    frames = []
    for index in range(20):
        t = index / FPS
        ids, points = [1], [_straight(1.0, 15.0, t, x_m=2.0)]
        if index >= 3:
            tb = (index - 3) / FPS
            # Track 2 accelerates: its speed changes at every measurement, and only then.
            ids.append(2)
            points.append([7.0, 1.0 + 10.0 * tb + 20.0 * tb * tb])
        frames.append(tracked_frame(index, round(t * 1e9), ids, np.array(points)))
    _run(stage, frames)
    assert _first_speed_frame(frames, 1) == 4
    assert _first_speed_frame(frames, 2) == 3 + 4
    speeds_2 = [s for _, s in _speeds(frames, 2)]
    changes = [
        index + 3
        for index in range(1, len(speeds_2))
        if not math.isnan(speeds_2[index]) and speeds_2[index] != speeds_2[index - 1]
    ]
    assert changes == [7, 11, 15, 19]
    assert all(s == pytest.approx(54.0) for _, s in _speeds(frames, 1) if not math.isnan(s))


def test_timing_comes_from_pts_when_frames_are_dropped(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=6, smoothing_window=6)
    rng = np.random.default_rng(3)
    kept = np.flatnonzero(rng.uniform(size=60) > 0.4)  # 40 % of the frames never arrive
    frames = [
        tracked_frame(index, round(number / FPS * 1e9), [1], np.array([_straight(0.5, 15.0, number / FPS)]))
        for index, number in enumerate(kept.tolist())
        if 0.5 + 15.0 * number / FPS < 19.5
    ]
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    assert len(reported) >= 8
    np.testing.assert_allclose(reported, 54.0, rtol=1e-6)  # a per-frame clock would read ~90


def test_irregular_timestamps_give_exact_speeds(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=5, smoothing_window=3)
    rng = np.random.default_rng(4)
    times = np.cumsum(rng.uniform(0.02, 0.05, size=40))
    frames = [
        tracked_frame(i, round(t * 1e9), [7], np.array([[3.0 + 2.0 * t, 1.0 + 12.0 * t]]))
        for i, t in enumerate(times)
    ]
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 7) if not math.isnan(s)]
    np.testing.assert_allclose(reported, math.hypot(2.0, 12.0) * 3.6, rtol=1e-6)


def test_an_id_switch_jump_is_rejected_and_counted(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=5, smoothing_window=5)
    frames = []
    for index in range(24):
        t = index / FPS
        y = 1.0 + 15.0 * t + (6.0 if index >= 12 else 0.0)  # the id jumps to a car 6 m ahead
        frames.append(tracked_frame(index, round(t * 1e9), [1], np.array([[4.0, y]])))
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    assert reported and max(reported) < 54.5 and min(reported) > 53.5
    assert not math.isnan(_speeds(frames, 1)[-1][1])  # still measured after the jump
    totals = stage.summary()["sources"]["cam"]["totals"]
    assert totals["rejected_max_acceleration"] == 5  # every window that spans the jump
    assert totals["restarts"] == 0


def test_a_single_glitch_is_rejected_without_moving_the_speed(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=5, smoothing_window=5)
    frames = []
    for index in range(26):
        t = index / FPS
        x = 4.0 + (2.0 if index == 15 else 0.0)  # one box off by 2 m sideways
        frames.append(tracked_frame(index, round(t * 1e9), [1], np.array([[x, 1.0 + 12.0 * t]])))
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 1) if not math.isnan(s)]
    np.testing.assert_allclose(reported, 43.2, atol=0.01)
    assert stage.summary()["sources"]["cam"]["totals"]["rejected_max_acceleration"] >= 2


def test_impossible_speeds_are_never_shown(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=2, smoothing_window=1, max_speed_kmh=250.0)
    fps = 120.0
    frames = [
        tracked_frame(i, round(i / fps * 1e9), [3], np.array([[5.0, 0.5 + 300 / 3.6 * i / fps]]))
        for i in range(25)
    ]
    _run(stage, frames)
    assert all(math.isnan(s) for _, s in _speeds(frames, 3))
    totals = stage.summary()["sources"]["cam"]["totals"]
    assert totals["rejected_max_speed"] >= 10
    assert totals["restarts"] >= 2  # restarts every ceil(n / stride) + 2 = 4 rejections


def test_a_bad_first_window_does_not_lock_the_track_out(tmp_path: Path) -> None:
    """The history restarts after repeated rejections, so the true speed takes over."""
    stage = _stage(tmp_path, window_frames=3, smoothing_window=3, window_stride=None)
    frames = []
    for index in range(40):
        t = index / FPS
        y = 1.0 + 10.0 * t + (2.5 if index < 3 else 0.0)  # the first three boxes were misplaced
        frames.append(tracked_frame(index, round(t * 1e9), [1], np.array([[5.0, y]])))
    _run(stage, frames)
    assert _speeds(frames, 1)[-1][1] == pytest.approx(36.0, abs=1e-6)


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
    stage = _stage(tmp_path, window_frames=4, smoothing_window=4)
    frames = [
        tracked_frame(i, round(i / FPS * 1e9), [5], np.array([[2.0 + 1.5 * i / FPS, 1.0 + 20 * i / FPS]]))
        for i in range(25)
    ]
    _run(stage, frames)
    reported = [s for _, s in _speeds(frames, 5) if not math.isnan(s)]
    np.testing.assert_allclose(reported, math.hypot(20.0, 1.5) * 3.6, rtol=1e-6)


def test_summary_statistics_match_the_reported_speeds(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=3, smoothing_window=2)
    frames = []
    for index in range(30):
        t = index / FPS
        y = 1.0 + 8.0 * t + 6.0 * t * t  # accelerating: speeds differ frame to frame
        frames.append(tracked_frame(index, round(t * 1e9), [9], np.array([[5.0, y]])))
    _run(stage, frames)
    reported = np.array([s for _, s in _speeds(frames, 9) if not math.isnan(s)])
    stage.end_of_stream("cam")
    summary = stage.summary()
    (track,) = summary["sources"]["cam"]["tracks"]
    assert track["track_id"] == 9 and track["frames_with_speed"] == len(reported)
    assert track["max_kmh"] == pytest.approx(reported.max(), abs=0.01)
    assert track["mean_kmh"] == pytest.approx(reported.mean(), abs=0.01)
    assert track["median_kmh"] == pytest.approx(np.median(reported), abs=0.01)
    assert summary["sources"]["cam"]["totals"]["tracks"] == 1
    assert summary["window_frames"] == 3 and summary["calibration"] == "top_down"


def test_state_is_dropped_after_a_gap_and_at_end_of_stream(tmp_path: Path) -> None:
    stage = _stage(tmp_path, window_frames=3, smoothing_window=1, forget_after_s=1.0)
    first = [tracked_frame(i, round(i / FPS * 1e9), [1], np.array([[5.0, 1.0 + 0.4 * i]])) for i in range(8)]
    # Three seconds later the tracker hands out id 1 again, to another vehicle, elsewhere.
    later = [
        tracked_frame(8 + i, round((3.0 + i / FPS) * 1e9), [1], np.array([[5.0, 15.0 - 0.3 * i]]))
        for i in range(8)
    ]
    _run(stage, first + later)
    speeds = _speeds(later, 1)
    assert [math.isnan(s) for _, s in speeds[:3]] == [True] * 3  # a new track: no window yet
    assert speeds[3][1] == pytest.approx(0.3 * FPS * 3.6)
    assert [t["track_id"] for t in stage.summary()["sources"]["cam"]["tracks"]] == [1, 1]
    stage.end_of_stream("cam")
    again = [tracked_frame(i, round(i / FPS * 1e9), [1], np.array([[5.0, 1.0 + 0.4 * i]])) for i in range(4)]
    _run(stage, again)
    assert math.isnan(_speeds(again, 1)[2][1]) and not math.isnan(_speeds(again, 1)[3][1])


def test_sources_are_independent(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = SpeedEstimator(
        calibration=calibration, window_frames=2, smoothing_window=1, shift_statistic="off"
    )
    stage.open(context("a", "b"))
    frames = []
    for i in range(6):
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
    """One vehicle after another, 5 frames each, at the given speeds."""
    frames = []
    for number, speed in enumerate(speeds_ms):
        for step in range(5):
            index = start_index + number * 5 + step
            frames.append(
                tracked_frame(
                    index,
                    round(index / FPS * 1e9),
                    [first_id + number],
                    np.array([[5.0, 1.0 + speed * step / FPS]]),
                )
            )
    return frames


@pytest.mark.parametrize("statistic", ["median_ratio", "ks"])
def test_camera_shift_alarm_fires_once_per_excursion(tmp_path: Path, statistic: str) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = SpeedEstimator(
        calibration=calibration,
        window_frames=2,
        smoothing_window=2,
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
    events = [(frame.index, event) for frame in frames for event in frame.events]
    assert len(events) == 2  # one per moved-camera phase, not one per frame
    phase_start = [20 * 5 + 15 * 5, 20 * 5 + 15 * 5 * 3]
    for (index, event), start in zip(events, phase_start, strict=True):
        assert start <= index < start + 15 * 5
        assert event["type"] == "calibration_suspect" and event["statistic"] == statistic
        assert event["source_id"] == "cam" and event["recent_median_kmh"] > event["baseline_median_kmh"]
    assert stage.summary()["sources"]["cam"]["totals"]["calibration_suspect_events"] == 2


def test_camera_shift_alarm_can_be_off(tmp_path: Path) -> None:
    stage = _stage(
        tmp_path, window_frames=2, smoothing_window=2, shift_baseline_tracks=5, shift_window_tracks=5
    )
    frames = _traffic_frames([25.0] * 5 + [40.0] * 10, 0, 1)
    _run(stage, frames)
    assert not any(frame.events for frame in frames)


def test_ks_pvalue() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 200), rng.normal(0, 1, 200)
    d_same, p_same = ks_pvalue(a, b)
    d_diff, p_diff = ks_pvalue(a, b + 1.0)
    assert p_same > 0.05 and p_diff < 1e-6 and d_diff > d_same


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window_frames": 0}, "window_frames must be an integer >= 1"),
        ({"smoothing_window": 2, "min_measurements": 3}, "cannot exceed smoothing_window"),
        ({"anchor": "feet"}, "anchor must be one of"),
        ({"max_speed_kmh": 0}, "max_speed_kmh must be a number > 0"),
        ({"max_acceleration_ms2": float("inf")}, "max_acceleration_ms2"),
        ({"window_stride": 0}, "window_stride"),
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
