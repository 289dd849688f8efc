"""Object lifecycle events: scripted frames, and the real traffic video end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.frame import Batch, Frame
from engine.sinks.objects import ObjectEventsSink
from engine.stage import Context
from tests.conftest import REPO_ROOT, SHARED_DIR
from tests.plugins.helpers_regions import linear, scene


class Collect:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def put(self, events: list[dict]) -> None:
        self.events += [json.loads(json.dumps(e)) for e in events]


def write_all(sink: ObjectEventsSink, frames: list[Frame], *, end: bool = True) -> list[dict]:
    sink.open(Context())
    for frame in frames:
        sink.write(Batch.of([frame]))
    if end:
        sink.end_of_stream(frames[0].source_id)
    sink.close()
    return [json.loads(line) for line in sink.path.read_text().splitlines()]


def test_new_updates_end_in_order_with_unique_ids(tmp_path: Path) -> None:
    frames = scene({1: linear((50, 60), (50, 140), 30), 2: [None] * 10 + linear((90, 60), (90, 140), 20)})
    frames[12].events.append({"type": "zone_entered", "zone": "z", "track_id": 2, "entered_pts_ns": 7})
    frames[20].events.append(
        {"type": "zone_left", "zone": "z", "track_id": 2, "left_pts_ns": 9, "dwell_s": 0.3}
    )
    frames[21].events.append({"type": "line_crossed", "line": "l", "direction": "down", "track_id": 1})
    frames[22].events.append({"type": "alert", "rule": "fast", "track_id": 1, "speed_kmh": 99.0})
    listener = Collect()
    events = write_all(ObjectEventsSink(tmp_path / "objects.jsonl", listeners=[listener]), frames)
    assert events == listener.events  # the listener got exactly what the file holds
    kinds = [(e["type"], e["object"]["track_id"], e.get("change", {}).get("kind")) for e in events]
    assert kinds == [
        ("new", 1, None),
        ("new", 2, None),
        ("update", 2, "zone_entered"),
        ("update", 2, "zone_left"),
        ("update", 1, "line_crossed"),
        ("alert", 1, None),
        ("end", 1, None),
        ("end", 2, None),
    ]
    assert len({e["id"] for e in events}) == len(events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["source"] == "cam0" and e["time"].endswith("Z") for e in events)
    end2 = events[-1]["object"]
    assert end2["zones_entered"] == [{"zone": "z", "entered_pts_ns": 7, "left_pts_ns": 9, "dwell_s": 0.3}]
    assert end2["end_reason"] == "end_of_stream" and end2["frames"] == 20
    assert end2["first_seen_pts_ns"] == frames[10].pts_ns and end2["last_seen_pts_ns"] == frames[29].pts_ns
    assert events[-2]["object"]["lines_crossed"] == [
        {"line": "l", "direction": "down", "pts_ns": frames[21].pts_ns}
    ]
    assert events[-2]["object"]["alerts"] == ["fast"]
    assert events[5]["alert"] == {"rule": "fast", "speed_kmh": 99.0}


def test_a_track_unseen_for_end_after_s_ends_and_a_reconnect_ends_every_track(tmp_path: Path) -> None:
    frames = scene({1: [(50.0, 50.0)] * 5, 2: [(90.0, 50.0)] * 100}, frames=100)
    frames[80].events.append({"type": "source_reconnected", "segment": 2})
    events = write_all(ObjectEventsSink(tmp_path / "o.jsonl", end_after_s=1.0), frames, end=False)
    ends = [
        (e["object"]["track_id"], e["object"]["end_reason"], e["pts_ns"])
        for e in events
        if e["type"] == "end"
    ]
    # Track 1 last seen on frame 4, ended on the first frame more than 1 s later (frame 35).
    assert ends[0] == (1, "lost", frames[35].pts_ns)
    assert ends[1] == (2, "source_reconnected", frames[80].pts_ns)
    # Track 2 is seen again after the reconnect (ids never repeat in practice; here it does):
    # a new object, ended when the sink closes.
    assert [e["type"] for e in events][-2:] == ["new", "end"]
    assert events[-1]["object"]["end_reason"] == "stopped"


def test_speed_class_and_emotion_updates(tmp_path: Path) -> None:
    frames = scene({1: [(50.0, 50.0)] * 90})
    for frame in frames:
        detections = frame.layers["objects"]
        detections.data["speed_kmh"] = np.array([math.nan if frame.index < 10 else 80.0 + frame.index / 10])
        # Votes: 30 car, then truck from frame 30 (truck wins from frame 61 on).
        detections.data["class_name"] = np.array(["car" if frame.index < 30 else "truck"])
        # The emotion flips every frame: rate-limited to one change a second (30 frames).
        detections.data["emotion"] = np.array(["happy" if frame.index % 2 else "sad"])
    final = {
        "type": "vehicle_speed_final",
        "track_id": 1,
        "class_name": "truck",
        "speed_kmh": 87.5,
        "speed_ci95_kmh": [86.0, 89.0],
        "max_speed_kmh": 88.9,
        "entry_pts_ns": 1,
        "exit_pts_ns": 2,
        "points": 40,
        "layer": "objects",
    }
    frames[85].events.append(final)
    events = write_all(ObjectEventsSink(tmp_path / "o.jsonl", update_interval_s=1.0), frames)
    changes = [(e["pts_ns"], e["change"]) for e in events if e["type"] == "update"]
    kinds = Counter(change["kind"] for _, change in changes)
    assert kinds["speed_available"] == 1 and kinds["speed_final"] == 1 and kinds["class_changed"] == 1
    assert 2 <= kinds["emotion_changed"] <= 3  # ~3 s of flips, at most one a second
    class_change = next(c for _, c in changes if c["kind"] == "class_changed")
    assert class_change == {"kind": "class_changed", "from": "car", "to": "truck"}
    end = events[-1]["object"]
    assert end["speed_final"]["speed_kmh"] == 87.5 and end["speed_final"]["speed_ci95_kmh"] == [86.0, 89.0]
    assert end["class_name"] == "truck" and end["class_votes"] == {"truck": 60, "car": 30}
    assert end["max_speed_kmh"] == pytest.approx(88.9)


def test_snapshots_are_written_at_the_end(tmp_path: Path) -> None:
    frames = scene({1: linear((50, 60), (50, 140), 10)})
    events = write_all(ObjectEventsSink(tmp_path / "o.jsonl", snapshot_dir=tmp_path / "snaps"), frames)
    path = Path(events[-1]["object"]["snapshot"])
    assert path.parent == tmp_path / "snaps" and path.read_bytes()[:2] == b"\xff\xd8"


def _mot_track_ids(path: Path) -> set[int]:
    return {int(line.split(",")[1]) for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.slow
def test_one_new_and_one_end_per_confirmed_track_on_the_traffic_video(
    tmp_path: Path, highway_video: Path
) -> None:
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    vistream = Path(REPO_ROOT / ".venv/bin/vistream")
    command = [str(vistream)] if vistream.exists() else ["python", "-m", "engine.cli.main"]
    subprocess.run(
        [
            *command,
            "run",
            str(highway_video),
            "--pipeline",
            "traffic_counting",
            "--no-video",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        check=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
    )
    events = [json.loads(line) for line in (tmp_path / "objects.jsonl").read_text().splitlines()]
    tracks = _mot_track_ids(tmp_path / "tracks_objects.txt")
    new = Counter(e["object"]["track_id"] for e in events if e["type"] == "new")
    end = Counter(e["object"]["track_id"] for e in events if e["type"] == "end")
    assert len(tracks) > 20
    assert set(new) == set(end) == tracks
    assert set(new.values()) == {1} and set(end.values()) == {1}
    assert len({e["id"] for e in events}) == len(events)
    opened: set[int] = set()
    for event in events:  # every other event falls between its object's new and end
        track_id = event["object"]["track_id"]
        if event["type"] == "new":
            opened.add(track_id)
        else:
            assert track_id in opened, event
        if event["type"] == "end":
            opened.discard(track_id)
            assert Path(event["object"]["snapshot"]).exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    crossed = [e for e in events if e["type"] == "update" and e["change"]["kind"] == "line_crossed"]
    assert len(crossed) == summary["stages"]["lines"]["lines"]["road"]["approaching"]["total"] == 27
