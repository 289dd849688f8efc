"""MotSink: MOTChallenge lines, tracked boxes only, one file per source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from engine.errors import SinkError
from engine.frame import Batch, Frame
from engine.sinks import MotSink
from engine.stage import Context
from tests.sinks.helpers_sinks import tracked_detections


def _frame(index: int, source_id: str = "cam", detections: sv.Detections | None = None) -> Frame:
    layers = {} if detections is None else {"objects": detections}
    return Frame(source_id=source_id, index=index, pts_ns=index, image=None, layers=layers)


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def test_writes_tracked_boxes_in_mot_format(tmp_path: Path) -> None:
    path = tmp_path / "mot" / "cam.txt"
    sink = MotSink(path)
    sink.open(Context())
    sink.write(Batch.of([_frame(0, detections=tracked_detections()), _frame(1)]))
    untracked = sv.Detections(xyxy=np.array([[1.0, 1.0, 2.0, 2.0]]))  # no tracker at all
    sink.write(Batch.of([_frame(2, detections=tracked_detections()), _frame(3, detections=untracked)]))
    assert len(_rows(path)) == 4  # flushed before close
    sink.close()
    sink.close()

    assert _rows(path) == [
        ["1", "4", "10.04", "20.26", "39.96", "39.74", "0.9123", "-1", "-1", "-1"],
        ["1", "7", "100.00", "5.00", "30.50", "40.55", "0.5000", "-1", "-1", "-1"],
        ["3", "4", "10.04", "20.26", "39.96", "39.74", "0.9123", "-1", "-1", "-1"],
        ["3", "7", "100.00", "5.00", "30.50", "40.55", "0.5000", "-1", "-1", "-1"],
    ]
    table = np.loadtxt(path, delimiter=",")  # what MOT tools read
    assert table.shape == (4, 10)


def test_missing_confidence_is_written_as_minus_one(tmp_path: Path) -> None:
    detections = sv.Detections(xyxy=np.array([[0.0, 0.0, 4.0, 2.0]]), tracker_id=np.array([1]))
    sink = MotSink(tmp_path / "a.txt")
    sink.open(Context())
    sink.write(Batch.of([_frame(9, detections=detections)]))
    sink.close()
    expected = ["10", "1", "0.00", "0.00", "4.00", "2.00", "-1.0000", "-1", "-1", "-1"]
    assert _rows(tmp_path / "a.txt") == [expected]


def test_one_file_per_source_and_per_restart(tmp_path: Path) -> None:
    single = MotSink(tmp_path / "one.txt")
    single.open(Context())
    single.write(Batch.of([_frame(0, "a", tracked_detections())]))
    with pytest.raises(SinkError, match=r"\{source_id\}"):
        single.write(Batch.of([_frame(0, "b", tracked_detections())]))
    single.close()

    sink = MotSink(tmp_path / "{source_id}" / "gt.txt")
    sink.open(Context())
    sink.write(Batch.of([_frame(0, "a", tracked_detections()), _frame(0, "b", tracked_detections())]))
    sink.end_of_stream("a")
    sink.write(Batch.of([_frame(0, "a", tracked_detections())]))  # a restarted
    sink.close()
    assert len(_rows(tmp_path / "a" / "gt.txt")) == 2
    assert len(_rows(tmp_path / "a" / "gt-2.txt")) == 2
    assert len(_rows(tmp_path / "b" / "gt.txt")) == 2


def test_write_before_open_raises_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="not open"):
        MotSink(tmp_path / "a.txt").write(Batch.of([_frame(0)]))
