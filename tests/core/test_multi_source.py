"""Many sources in one pipeline: batching across sources, per-source outputs, independent ends."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import PipelineSettings, parse_sources
from engine.errors import ConfigError, SourceError
from engine.frame import Frame, SourceInfo
from engine.pipeline import Pipeline
from engine.sources import gstreamer_available
from engine.stage import NamedStage
from tests.cli.test_cli import decoded_frame_count, read_events, vistream
from tests.conftest import shared_path
from tests.helpers import ListSource, ProbeStage, make_frame
from tests.helpers_live import RecordingSink


def _pipeline(*stages: ProbeStage, **options: object) -> Pipeline:
    return Pipeline([NamedStage(stage.label, stage) for stage in stages], PipelineSettings(**options))  # type: ignore[arg-type]


class PacedSource(ListSource):
    """A live-like in-memory source: one frame every ``interval_s``."""

    def __init__(self, frame_count: int, *, source_id: str, interval_s: float) -> None:
        super().__init__(frame_count, source_id=source_id, live=True)
        self.interval_s = interval_s

    def frames(self) -> Iterator[Frame]:
        for index in range(self.frame_count):
            if self.closed.wait(self.interval_s):
                return
            yield make_frame(index, source_id=self.source_id)


def test_frames_of_all_sources_share_batches_in_order_per_source() -> None:
    stage = ProbeStage()
    recorder = RecordingSink()
    sources = [ListSource(12, source_id=name) for name in ("a", "b", "c")]
    # A generous max_wait_ms: batches are sent incomplete only when the sources end, not
    # because a loaded machine delivered frames late.
    metrics = _pipeline(stage, batch_size=4, max_wait_ms=2000).run(sources, [recorder])
    assert Counter(row[0] for row in recorder.rows) == {"a": 12, "b": 12, "c": 12}
    for name in "abc":
        assert [row[1] for row in recorder.rows if row[0] == name] == list(range(12))
    assert sum(stage.batch_sizes) == 36 and max(stage.batch_sizes) == 4
    assert stage.batch_sizes.count(4) >= 8  # full batches, mixing sources
    assert sorted(recorder.ended) == ["a", "b", "c"]
    assert metrics.frames_out == {"a": 12, "b": 12, "c": 12}


# max_wait_ms is tested on a clock the test controls, in tests/core/test_batching.py.


def test_one_source_failing_or_ending_leaves_the_others_running() -> None:
    journal: list[str] = []
    recorder = RecordingSink()
    sources = [
        ListSource(5, source_id="short"),
        ListSource(100, source_id="broken", fail_after=20),
        PacedSource(30, source_id="live", interval_s=0.01),
    ]
    pipeline = _pipeline(ProbeStage(label="probe", journal=journal), batch_size=2)
    with pytest.raises(SourceError, match="broke after 20"):
        pipeline.run(sources, [recorder])
    counts = Counter(row[0] for row in recorder.rows)
    assert counts == {"short": 5, "broken": 20, "live": 30}  # everything before the failure too
    assert recorder.closed and sorted(recorder.ended) == ["broken", "live", "short"]
    assert journal.index("eos probe short") < journal.index("eos probe live")
    assert pipeline.sources["broken"].status == "failed"
    assert pipeline.sources["short"].status == pipeline.sources["live"].status == "ended"
    assert pipeline.metrics.source_state["broken"] == "failed"


def test_max_frames_applies_to_each_source() -> None:
    recorder = RecordingSink()
    _pipeline(ProbeStage(), batch_size=3).run(
        [ListSource(50, source_id="a"), ListSource(7, source_id="b")], [recorder], max_frames=10
    )
    assert Counter(row[0] for row in recorder.rows) == {"a": 10, "b": 7}


@pytest.mark.fault(
    "A source that blocks forever (never yields)",
    "Its own reader thread: the other sources are not held up; a stop still ends the run (closed, or left"
    " behind after 5 s with a warning)",
)
def test_a_source_that_hangs_does_not_hold_up_the_others() -> None:
    class Hanging(ListSource):
        def frames(self) -> Iterator[Frame]:
            self.closed.wait(30)
            return iter(())  # type: ignore[return-value]

    recorder = RecordingSink()
    pipeline = _pipeline(ProbeStage())
    stopper = threading.Timer(1.0, pipeline.request_stop)
    stopper.start()
    started = time.monotonic()
    pipeline.run([Hanging(1, source_id="stuck"), ListSource(20, source_id="fine")], [recorder])
    assert time.monotonic() - started < 5
    assert Counter(row[0] for row in recorder.rows) == {"fine": 20}


def test_two_sources_with_one_id_are_refused() -> None:
    with pytest.raises(ConfigError, match="two sources are named 'cam0'"):
        _pipeline(ProbeStage()).run([ListSource(1), ListSource(1)], [])
    with pytest.raises(ConfigError, match="two sources have the id 'x'"):
        parse_sources([{"uri": "a.mp4", "id": "x"}, {"uri": "b.mp4", "id": "x"}])


def test_source_ids_default_to_readable_unique_names() -> None:
    specs = parse_sources(
        ["clips/gate.mp4", "other/gate.mp4", "rtsp://u:pw@10.0.0.5:554/s1", "test://?fps=5", "/dev/video2"]
    )
    assert [spec.id for spec in specs] == ["gate", "gate-2", "10.0.0.5", "test", "video2"]
    assert specs[2].reconnect is not None and specs[0].reconnect is None  # cameras reconnect
    assert "pw" not in repr(specs[2])


def test_yaml_sources_with_options(tmp_path: Path) -> None:
    from engine.config import load_pipeline

    (tmp_path / "p.yaml").write_text(
        "sources:\n"
        "  - clip.mp4\n"
        "  - uri: rtsp://cam.local/live\n"
        "    id: gate\n"
        "    frame_policy: all\n"
        "    max_attempts: 3\n"
        "    backoff_max_s: 4\n"
        "max_wait_ms: 5\n"
        "stages:\n  - stage: track\n"
    )
    spec = load_pipeline(str(tmp_path / "p.yaml"))
    clip, gate = spec.sources
    assert clip.uri == str(tmp_path / "clip.mp4") and clip.id == "clip"  # relative to the YAML
    assert (gate.id, gate.frame_policy) == ("gate", "all")
    assert gate.reconnect is not None and gate.reconnect.max_attempts == 3
    assert gate.reconnect.backoff_max_s == 4 and spec.settings.max_wait_ms == 5


@pytest.mark.fault(
    "Bad `sources:` entries (unknown key, bad id, duplicate id, bad policy, bad backoff)",
    "User error naming the entry (`sources[0] (a.mp4).frame_policy: …`)",
)
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"uri": "a.mp4", "frame_policy": "newest"}, r"frame_policy: expected one of latest, all"),
        ({"uri": "a.mp4", "id": "bad/id"}, r"\.id: expected letters, digits"),
        ({"uri": "a.mp4", "max_attempts": 3}, r"'max_attempts' applies to reconnecting sources only"),
        ({"uri": "rtsp://h/x", "max_attempts": 0}, r"max_attempts: expected a positive integer"),
        ({"uri": "rtsp://h/x", "backoff_max_s": 0.1}, r"backoff_max_s \(0.1\) must be >="),
        ({"uri": "rtsp://h/x", "stall_timeout_s": -1}, r"stall_timeout_s: expected a positive number"),
        ({"uri": "a.mp4", "colour": 1}, r"unknown key 'colour'"),
        ({"url": "a.mp4"}, r"expected a URI or a mapping with a 'uri' key"),
        ({"uri": "ftp://h/a.mp4"}, r"unsupported source URI scheme 'ftp'"),
    ],
)
def test_bad_source_entries_name_the_place(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"sources\[0\].*" + message):
        parse_sources([entry])


@pytest.mark.gst
@pytest.mark.slow
def test_three_sources_two_files_and_a_live_one_get_their_own_outputs(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    highway = shared_path("media/traffic/highway_overpass_320x240_60fps.avi")
    people = shared_path("media/people/pedestrians_768x576_10fps.avi")
    out = tmp_path / "three"
    result = vistream(
        "run",
        str(highway),
        str(people),
        "test://?width=160&height=120&fps=25",
        "--out",
        str(out),
        "--max-frames",
        "30",
        "--quiet",
        timeout_s=300,
    )
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    by_source: dict[str, list[dict]] = {}
    for event in events:
        by_source.setdefault(event["source"], []).append(event)
    highway_id, people_id = highway.stem, people.stem
    assert set(by_source) == {highway_id, people_id, "test"}
    for source_id in (highway_id, people_id):  # files: every frame, in order
        assert [e["frame"] for e in by_source[source_id]] == list(range(30))
    live = [e["frame"] for e in by_source["test"]]
    assert len(live) == 30 and live == sorted(set(live))
    classes = {
        source_id: Counter(obj["class_name"] for e in rows for obj in e["layers"]["objects"])
        for source_id, rows in by_source.items()
    }
    assert classes[highway_id]["car"] > 20 and classes[people_id]["person"] > 50
    # Per-source state: the highway's detections and track ids are exactly those of a run on
    # the highway alone (other sources in the batches and trackers change nothing).
    alone = tmp_path / "alone"
    assert (
        vistream(
            "run", str(highway), "--out", str(alone), "--max-frames", "30", "--quiet", "--no-video"
        ).returncode
        == 0
    )
    assert [e["layers"] for e in read_events(alone)] == [e["layers"] for e in by_source[highway_id]]
    expected = {highway_id: (320, 240, 60), people_id: (768, 576, 10), "test": (160, 120, 25)}
    import av

    for source_id, (width, height, fps) in expected.items():
        video = out / f"annotated_{source_id}.mp4"
        assert decoded_frame_count(video)[0] == len(by_source[source_id])
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            # The live source's dropped frames are gaps in the video (its nominal rate stays).
            assert (stream.width, stream.height, stream.base_rate) == (width, height, fps)
        tracks = out / f"tracks_objects_{source_id}.txt"
        assert tracks.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {k: v["status"] for k, v in summary["sources"].items()} == dict.fromkeys(expected, "ended")
    assert summary["frames_out"] == dict.fromkeys(expected, 30)
    assert summary["frames_dropped"][highway_id] == summary["frames_dropped"][people_id] == 0
    assert f"video_{people_id}" in summary["outputs"]


@pytest.mark.fault(
    "A truncated file among other sources",
    "The other sources run to their end with complete outputs; the run then exits 2; `summary.json` marks"
    " that source `failed` with the reason",
)
@pytest.mark.gst
def test_a_failing_file_exits_2_and_leaves_the_other_outputs_complete(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    highway = shared_path("media/traffic/highway_overpass_320x240_60fps.avi")
    truncated = tmp_path / "cut.avi"
    data = highway.read_bytes()
    truncated.write_bytes(data[: len(data) // 20])  # about 130 frames, then "truncated"
    pipeline = tmp_path / "light.yaml"
    pipeline.write_text("stages:\n  - stage: track\n  - stage: annotate\n")
    out = tmp_path / "out"
    result = vistream(
        "run",
        str(truncated),
        "test://?width=96&height=64&fps=30&frames=200",
        "--pipeline",
        str(pipeline),
        "--out",
        str(out),
        "--quiet",
        timeout_s=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vistream: error: ")
    assert "truncated" in result.stderr and "Traceback" not in result.stderr
    counts = Counter(event["source"] for event in read_events(out))
    assert counts["test"] == 200 and 100 < counts["cut"] < 200
    assert decoded_frame_count(out / "annotated_test.mp4")[0] == 200
    assert decoded_frame_count(out / "annotated_cut.mp4")[0] == counts["cut"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    cut = summary["sources"]["cut"]
    assert cut["status"] == "failed" and "truncated" in cut["error"]
    assert summary["sources"]["test"]["status"] == "ended"


def test_many_sources_in_yaml_run_without_source_arguments(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "sources:\n"
        "  - uri: synthetic://traffic?frames=12&width=128&height=96&render=0\n"
        "    id: north\n"
        "  - uri: synthetic://traffic?frames=7&width=96&height=64&render=0&seed=2\n"
        "    id: south\n"
        "stages:\n  - stage: track\n"
    )
    out = tmp_path / "out"
    result = vistream("run", "--pipeline", str(pipeline), "--out", str(out), "--quiet", "--no-video")
    assert result.returncode == 0, result.stderr
    assert Counter(event["source"] for event in read_events(out)) == {"north": 12, "south": 7}
    assert (out / "tracks_objects_north.txt").exists() and (out / "tracks_objects_south.txt").exists()


def test_source_info_is_known_to_stages_when_they_open() -> None:
    seen: dict[str, SourceInfo] = {}

    class Looking(ProbeStage):
        def open(self, context: object) -> None:
            seen.update(context.sources)  # type: ignore[attr-defined]

    _pipeline(Looking()).run([ListSource(1, source_id="a"), ListSource(1, source_id="b")], [])
    assert set(seen) == {"a", "b"} and seen["a"].width == 64
