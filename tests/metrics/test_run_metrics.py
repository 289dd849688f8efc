"""Run metrics: percentiles, per-source counts and ages, snapshots and the status line."""

from __future__ import annotations

import numpy as np

from engine.frame import Batch
from engine.metrics.run import LatencySeries, RunMetrics, percentiles_ms, status_line
from tests.helpers import make_detections, make_frame


def test_percentiles_of_known_samples() -> None:
    summary = percentiles_ms(np.arange(1, 101))
    assert summary["count"] == 100 and summary["p50_ms"] == 50.5 and summary["max_ms"] == 100
    assert percentiles_ms([]) == {"count": 0}


def test_a_latency_series_keeps_its_recent_samples_only() -> None:
    series = LatencySeries(capacity=3)
    for value in (1.0, 2.0, 3.0, 4.0):
        series.add(value)
    assert series.recent().tolist() == [2.0, 3.0, 4.0] and series.latest() == 4.0


def test_outputs_count_frames_classes_tracks_and_ages_per_source() -> None:
    metrics = RunMetrics()
    frames = [make_frame(index, source_id=source) for index in range(2) for source in ("a", "b")]
    for frame in frames:
        detections = make_detections([[0, 0, 4, 4], [5, 5, 9, 9]], class_name="car")
        detections.tracker_id = np.array([7, -1])
        frame.layers["objects"] = detections
        frame.capture_ns = 0
    metrics.record_output(Batch(frames), now_ns=5_000_000)
    summary = metrics.summary()
    assert summary["frames_out"] == {"a": 2, "b": 2}
    assert summary["detections_per_class"] == {"objects": {"car": 8}}
    assert summary["unique_tracks"] == {"objects": 2}  # track 7 of a and of b; -1 is no track
    assert summary["frame_age_ms"]["a"]["p50_ms"] == 5.0


def test_fps_counts_the_frame_loop_not_the_startup() -> None:
    metrics = RunMetrics(started_ns=0)
    metrics.loop_started_ns = 2_000_000_000  # 2 s of startup: sources opened, models loaded
    frames = [make_frame(index) for index in range(50)]
    for frame in frames:
        frame.capture_ns = 0
    metrics.record_output(Batch(frames), now_ns=2_500_000_000)
    metrics.finished_ns = 2_600_000_000  # outputs closed after the last frame
    summary = metrics.summary()
    assert summary["startup_s"] == 2.0 and summary["loop_s"] == 0.5 and summary["wall_s"] == 2.6
    assert summary["fps"] == 100.0  # 50 frames in the 0.5 s loop


def test_a_snapshot_is_independent_of_the_running_metrics() -> None:
    metrics = RunMetrics()
    metrics.update_source("cam", frames_in=3, state="up")
    snapshot = metrics.snapshot()
    metrics.update_source("cam", frames_in=9, reconnects=1)
    assert snapshot.frames_in["cam"] == 3 and snapshot.reconnects["cam"] == 0


def test_the_status_line_speaks_per_source_over_its_interval() -> None:
    before = RunMetrics()
    now = RunMetrics()
    now.update_source("gate", state="up", frames_in=10, frames_dropped=2)
    frames = [make_frame(index, source_id="gate") for index in range(10)]
    for frame in frames:
        frame.capture_ns = 0
    now.record_output(Batch(frames), now_ns=80_000_000)
    line = status_line(now, before, 2.0, {"gate": 1})
    assert line.startswith("5.0 fps | gate: up, 5.0 fps, age p50 80 ms p99 80 ms, dropped 2, queue 1")
