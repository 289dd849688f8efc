"""JsonlSink: schema round trip, strict JSON, flushed per batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from engine.errors import SinkError
from engine.frame import Batch, Frame
from engine.sinks import JsonlSink
from engine.sinks.serialize import detections_to_records, to_json_line
from engine.stage import Context
from tests.sinks.helpers_sinks import tracked_detections


def _strict_lines(path: Path) -> list[dict]:
    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line, parse_constant=no_constants) for line in lines]


def _frame(index: int, source_id: str = "cam", **layers: sv.Detections) -> Frame:
    return Frame(source_id=source_id, index=index, pts_ns=index * 40_000_000, image=None, layers=dict(layers))


def test_frames_round_trip_through_the_schema(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out" / "detections.jsonl")
    sink.open(Context())
    skipped = _frame(1, objects=sv.Detections.empty())
    skipped.skipped_reason = "detect: CUDA out of memory"
    skipped.events.append({"type": "calibration_suspect", "residual_px": np.float32(3.5)})
    untracked = sv.Detections(xyxy=np.array([[1.0, 2.0, 3.0, 4.0]]), class_id=np.array([5]))
    sink.write(Batch.of([_frame(0, objects=tracked_detections()), skipped]))
    sink.write(Batch.of([_frame(0, "door", faces=untracked)]))
    sink.close()
    sink.close()  # idempotent

    first, second, third = _strict_lines(tmp_path / "out" / "detections.jsonl")
    assert {k: first[k] for k in ("source", "frame", "pts_ns")} == {"source": "cam", "frame": 0, "pts_ns": 0}
    assert "skipped" not in first and "events" not in first
    car, person, faint = first["layers"]["objects"]
    assert car == {
        "track_id": 4,
        "class_id": 2,
        "class_name": "car",
        "confidence": 0.9123,
        "xyxy": [10.0, 20.3, 50.0, 60.0],
        "speed_kmh": 54.444,
        "landmarks": [[12.3, 12.3]] * 5,
        "emotion": "happy",
        "lane": 1,
        "parked": False,
    }
    assert person["track_id"] == 7 and person["speed_kmh"] is None and person["emotion"] is None
    assert person["xyxy"] == [100.0, 5.0, 130.5, 45.5]  # float32 45.55 is 45.5499...
    assert faint["track_id"] is None and faint["confidence"] == 0.05  # untracked: null id, kept
    assert second["skipped"] == "detect: CUDA out of memory"
    assert second["events"] == [{"type": "calibration_suspect", "residual_px": 3.5}]
    assert second["layers"] == {"objects": []}
    assert third["source"] == "door"
    assert third["layers"]["faces"] == [
        {
            "track_id": None,
            "class_id": 5,
            "class_name": None,
            "confidence": None,
            "xyxy": [1.0, 2.0, 3.0, 4.0],
        }
    ]


def test_every_batch_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    sink = JsonlSink(path)
    sink.open(Context())
    for index in range(3):
        sink.write(Batch.of([_frame(index, objects=tracked_detections())]))
        assert [line["frame"] for line in _strict_lines(path)] == list(range(index + 1))
    sink.close()


def test_non_finite_values_in_object_columns_become_null() -> None:
    detections = sv.Detections(
        xyxy=np.zeros((1, 4)),
        data={
            "scores": np.array([np.float64("nan")], dtype=object),
            "misc": np.array([{"a": float("inf")}], dtype=object),
        },
    )
    line = to_json_line({"objects": detections_to_records(detections)})
    assert json.loads(line) == {
        "objects": [
            {
                "track_id": None,
                "class_id": None,
                "class_name": None,
                "confidence": None,
                "xyxy": [0.0, 0.0, 0.0, 0.0],
                "scores": None,
                "misc": {"a": None},
            }
        ]
    }


def test_write_before_open_and_unwritable_paths_raise_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="not open"):
        JsonlSink(tmp_path / "a.jsonl").write(Batch.of([_frame(0)]))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SinkError, match="cannot create"):
        JsonlSink(blocker / "out.jsonl").open(Context())


def _voted(index: int, classes: dict[int, str], source_id: str = "cam") -> Frame:
    """A frame (25 fps) whose tracks carry the given classes (their vote at that frame)."""
    ids = sorted(classes)
    detections = sv.Detections(
        xyxy=np.tile(np.array([[1.0, 2.0, 30.0, 40.0]]), (len(ids), 1)),
        class_id=np.array([7 if classes[i] == "truck" else 2 for i in ids]),
        tracker_id=np.array(ids),
        data={"class_name": np.array([classes[i] for i in ids])},
    )
    return _frame(index, source_id, objects=detections)


def test_a_track_has_one_class_in_the_file_its_vote_after_the_delay(tmp_path: Path) -> None:
    """With class_delay_s, lines wait that long: a vote that turns from truck to car within
    it is written as car on every line; a later turn does not change the written class; a
    track shorter than the delay gets its last vote; lines held at the end are written."""
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, class_delay_s=1.0)
    sink.open(Context())
    for index in range(100):  # 4 s at 25 fps
        classes = {1: "truck" if index < 12 else "car" if index < 60 else "truck"}
        if 30 <= index < 40:
            classes[2] = "car" if index < 38 else "truck"
        sink.write(Batch.of([_voted(index, classes)]))
        if index == 10:
            assert sink.frames_written == 0  # still held: 0.4 s of 1 s
    assert sink.frames_written == 100 - 25
    sink.close()
    lines = _strict_lines(path)
    assert [line["frame"] for line in lines] == list(range(100))
    written = {}
    for line in lines:
        for detection in line["layers"]["objects"]:
            written.setdefault(detection["track_id"], set()).add(
                (detection["class_id"], detection["class_name"])
            )
    assert written == {1: {(2, "car")}, 2: {(7, "truck")}}


def test_classes_of_long_gone_tracks_are_forgotten(tmp_path: Path) -> None:
    """A camera running for days: a track unseen for FORGET_TRACK_AFTER_S of stream time is
    dropped from the sink's memory; live tracks keep their written class."""
    sink = JsonlSink(tmp_path / "events.jsonl", class_delay_s=1.0)
    sink.open(Context())
    frames_per_minute = 25 * 60
    for index in range(3 * frames_per_minute):  # one new track per second, 3 minutes
        track = 1 + index // 25
        sink.write(Batch.of([_voted(index, {track: "car", 0: "truck"})]))  # track 0 stays all along
    remembered = set(sink._latest["cam"])
    assert len(remembered) < 2 * 60 + 10  # not the 180 tracks seen
    assert ("objects", 0) in remembered and ("objects", 1) not in remembered
    sink.close()
    classes = {
        d["class_name"]
        for line in _strict_lines(tmp_path / "events.jsonl")
        for d in line["layers"]["objects"]
        if d["track_id"] == 0
    }
    assert classes == {"truck"}


def test_without_a_delay_lines_go_out_at_once_with_their_classes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    sink.open(Context())
    sink.write(Batch.of([_voted(0, {1: "truck"}), _voted(1, {1: "car"})]))
    assert sink.frames_written == 2
    sink.end_of_stream("cam")
    sink.close()
    assert [line["layers"]["objects"][0]["class_name"] for line in _strict_lines(path)] == ["truck", "car"]
