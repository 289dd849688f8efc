"""The stream worker in-process (the same class the worker processes and a Ray actor run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.serve.streams import StreamConfig
from engine.serve.worker import FrameTap, StreamWorker
from tests.helpers import make_frame
from tests.serve.helpers_serve import wait_for, write_pipelines


@pytest.mark.gst
def test_worker_runs_a_live_stream_and_encodes_only_on_request(tmp_path: Path) -> None:
    write_pipelines(tmp_path)
    config = StreamConfig(
        name="cam", uri="test://?width=320&height=240&fps=20&pattern=ball", pipeline="light"
    )
    worker = StreamWorker(config, data_dir=tmp_path)
    assert worker.latest_jpeg() is None  # nothing before the first frame
    worker.start()
    try:
        status = wait_for(
            lambda: (s := worker.status())["state"] == "running" and s["fps"] > 0 and s, 30, "running"
        )
        assert status["width"] == 320 and status["height"] == 240
        assert (
            status["frame_age_p50_ms"] is not None
            and status["frame_age_p99_ms"] >= status["frame_age_p50_ms"]
        )
        assert worker._jpeg_cache is None  # nobody asked: nothing was encoded
        seq, jpeg = worker.latest_jpeg()
        assert jpeg[:2] == b"\xff\xd8"
        assert worker.latest_jpeg(after_seq=seq + 10**6) is None
        raw = worker.latest_jpeg(annotated=False)
        assert raw is not None and raw[1][:2] == b"\xff\xd8"
        _, events = worker.events_since(0)
        assert events and events[0]["type"] == "source_connected" and events[0]["stream"] == "cam"
        assert (worker.out_dir / "events.jsonl").exists()
    finally:
        worker.stop()
    assert worker.status()["state"] == "stopped"


def test_worker_that_cannot_start_reports_failed_with_the_reason(tmp_path: Path) -> None:
    write_pipelines(tmp_path)
    missing = tmp_path / "nope.mp4"
    worker = StreamWorker(StreamConfig(name="f", uri=str(missing), pipeline="plain"), data_dir=tmp_path)
    worker.start()
    wait_for(lambda: worker.done, 30, "worker done")
    status = worker.status()
    assert status["state"] == "failed"
    assert "nope.mp4" in status["last_error"]


def test_frame_tap_keeps_the_latest_frame_events_and_object_summaries() -> None:
    import supervision as sv

    tap = FrameTap("cam")
    frames = [make_frame(index=i, source_id="cam") for i in range(3)]
    frames[1].events.append({"type": "calibration_suspect", "why": "test"})
    frames[2].layers["objects"] = sv.Detections(
        xyxy=np.array([[0, 0, 10, 10]], dtype=np.float32),
        tracker_id=np.array([7]),
        data={"class_name": np.array(["car"]), "speed_kmh": np.array([88.04])},
    )
    from engine.frame import Batch

    tap.write(Batch.of(frames))
    seq, frame = tap.latest()
    assert seq == 0 and frame is frames[2]
    last, events = tap.events_since(0)
    assert [event["type"] for event in events] == ["calibration_suspect", "objects"]
    assert events[1]["objects"] == [
        {"class_name": "car", "layer": "objects", "track_id": 7, "speed_kmh": 88.0}
    ]
    assert tap.events_since(last) == (last, [])
    # summaries are rate-limited: the same objects again within a second add no event
    tap.write(Batch.of([frames[2]]))
    assert tap.events_since(last)[1] == []
