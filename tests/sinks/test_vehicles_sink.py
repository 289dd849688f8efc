"""VehiclesSink: rows from final-speed events, finals kept in stage summaries, one row each."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import SinkError
from engine.frame import Batch, Frame
from engine.sinks.vehicles import COLUMNS, VehiclesSink
from engine.stage import Context


def _final(track_id: int, entry_ns: int, speed_kmh: float) -> dict[str, Any]:
    return {
        "type": "vehicle_speed_final",
        "track_id": track_id,
        "class_name": "car",
        "speed_kmh": speed_kmh,
        "speed_ci95_kmh": [speed_kmh - 1.0, speed_kmh + 1.0],
        "max_speed_kmh": speed_kmh + 2.0,
        "entry_pts_ns": entry_ns,
        "exit_pts_ns": entry_ns + 1_500_000_000,
        "points": 45,
        "layer": "objects",
        "segment": 1,
        "reason": "left_zone",
    }


def _frame(index: int, source_id: str = "cam", events: list[dict[str, Any]] | None = None) -> Frame:
    frame = Frame(source_id=source_id, index=index, pts_ns=index, image=np.zeros((4, 4, 3), np.uint8))
    frame.events.extend(events or [])
    return frame


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_header_always_and_rows_from_events(tmp_path: Path) -> None:
    sink = VehiclesSink(tmp_path / "vehicles.csv")
    sink.open(Context())
    assert (tmp_path / "vehicles.csv").read_text(encoding="utf-8").strip() == ",".join(COLUMNS)
    sink.write(
        Batch([_frame(0), _frame(1, events=[{"type": "calibration_suspect"}, _final(4, 10**9, 88.5)])])
    )
    sink.close()
    sink.close()
    (row,) = _rows(tmp_path / "vehicles.csv")
    assert row["source"] == "cam" and row["track_id"] == "4" and row["class_name"] == "car"
    assert float(row["speed_kmh"]) == 88.5
    assert (row["speed_ci95_low_kmh"], row["speed_ci95_high_kmh"]) == ("87.5", "89.5")
    assert (row["entry_s"], row["exit_s"], row["points"]) == ("1.000", "2.500", "45")


def test_finals_only_in_the_summary_are_written_when_the_source_ends(tmp_path: Path) -> None:
    """The speed stage issues the finals of vehicles still in view at end_of_stream: no
    frame carries them; the sink reads them from the summary once, never twice."""
    on_frame, at_end = _final(1, 0, 50.0), _final(2, 5, 60.0)
    summaries = {"speed": {"sources": {"cam": {"vehicles": [on_frame, at_end]}, "other": {"vehicles": []}}}}
    sink = VehiclesSink(tmp_path / "vehicles.csv", summaries=lambda: summaries)
    sink.open(Context())
    sink.write(Batch([_frame(0, events=[on_frame])]))
    sink.end_of_stream("cam")
    sink.end_of_stream("cam")
    sink.end_of_stream("other")
    sink.write(Batch([_frame(9, events=[at_end])]))  # a restart delivering it again
    sink.close()
    assert [row["track_id"] for row in _rows(tmp_path / "vehicles.csv")] == ["1", "2"]
    assert sink.rows_written == 2


def test_sources_share_one_table(tmp_path: Path) -> None:
    sink = VehiclesSink(tmp_path / "vehicles.csv")
    sink.open(Context())
    sink.write(Batch([_frame(0, "a", [_final(1, 0, 40.0)]), _frame(0, "b", [_final(1, 0, 70.0)])]))
    sink.close()
    assert [(r["source"], r["speed_kmh"]) for r in _rows(tmp_path / "vehicles.csv")] == [
        ("a", "40.0"),
        ("b", "70.0"),
    ]


def test_write_before_open_and_unwritable_paths_fail(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="not open"):
        VehiclesSink(tmp_path / "v.csv").write(Batch([_frame(0, events=[_final(1, 0, 1.0)])]))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(SinkError, match="cannot create"):
        VehiclesSink(tmp_path / "dir.csv").open(Context())
