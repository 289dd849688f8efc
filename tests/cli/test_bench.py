"""`vistream bench`: per-frame timelines, the latency decomposition, stream sweeps, reports,
the live replay source and the regression comparison of `make bench`."""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.cli.bench.pipeline import (
    BenchOptions,
    cameras_per_machine,
    keeps_up,
    parse_streams,
    replays_live,
    warmup_mask,
)
from engine.cli.main import main
from engine.errors import ConfigError
from engine.frame import Batch, Frame, SourceInfo
from engine.metrics.timeline import TimelineRecorder, check_sum, decompose
from engine.sources.replay import LiveReplaySource, replay_decimation
from engine.stage import BaseStage
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import regression  # noqa: E402  (benchmarks/ is not a package)

SLEEP_MS = 3.0


class SleepStage(BaseStage):
    """A stage that takes a known time per batch (a stand-in for a model)."""

    def __init__(self, *, sleep_ms: float = SLEEP_MS) -> None:
        self.sleep_ms = sleep_ms

    def __call__(self, batch: Batch) -> Batch:
        time.sleep(self.sleep_ms / 1e3)
        return batch


def _frame(index: int, capture_ns: int, source_id: str = "cam0") -> Frame:
    return Frame(
        source_id=source_id,
        index=index,
        pts_ns=index,
        image=np.zeros((4, 4, 3), np.uint8),
        capture_ns=capture_ns,
    )


# --- streams parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", (4,)), ("1,2,4,8", (1, 2, 4, 8)), ("8, 1,1", (1, 8)), (" 2 ", (2,))],
)
def test_parse_streams_accepts_counts_and_lists(text: str, expected: tuple[int, ...]) -> None:
    assert parse_streams(text) == expected


@pytest.mark.parametrize("text", ["", "0", "a", "1,,2", "-1", "1.5", "2,0"])
def test_parse_streams_rejects_bad_values_naming_them(text: str) -> None:
    with pytest.raises(ConfigError, match="--streams"):
        parse_streams(text)


# --- timeline and decomposition -----------------------------------------------------------


def test_decomposition_segments_are_the_known_times_and_add_up() -> None:
    recorder = TimelineRecorder(["detect", "track"])
    ms = 1_000_000
    first, second = _frame(0, 0), _frame(1, 4 * ms)
    batch = Batch([first, second])
    # batch ready at 4 ms (second capture); detect 10..25 ms, track 26..27 ms, written at 30 ms
    recorder.on_stage("detect", batch, 10 * ms, 25 * ms)
    recorder.on_stage("track", batch, 26 * ms, 27 * ms)
    recorder.on_output(batch, 30 * ms)
    timeline = recorder.timeline()
    segments = decompose(timeline)

    np.testing.assert_allclose(segments["batch_fill"], [4.0, 0.0])
    np.testing.assert_allclose(segments["queue"], [6.0, 6.0])
    np.testing.assert_allclose(segments["stage:detect"], [15.0, 15.0])
    np.testing.assert_allclose(segments["stage:track"], [1.0, 1.0])
    np.testing.assert_allclose(segments["handoff"], [1.0, 1.0])
    np.testing.assert_allclose(segments["sink"], [3.0, 3.0])
    np.testing.assert_allclose(segments["end_to_end"], [30.0, 26.0])
    parts = sum(values for name, values in segments.items() if name != "end_to_end")
    np.testing.assert_allclose(parts, segments["end_to_end"])
    check = check_sum(segments, np.array([30.0, np.nan]))
    assert check["frames"] == 1 and check["reference"] == "pipeline metrics"
    assert check["residual_ms"] == pytest.approx(0.0)


def test_check_sum_reports_a_reference_that_disagrees() -> None:
    segments = {
        "queue": np.array([1.0, 1.0]),
        "stage:a": np.array([2.0, 2.0]),
        "end_to_end": np.array([3.0, 3.0]),
    }
    check = check_sum(segments, np.array([4.0, 4.0]))
    assert check["residual_ms"] == pytest.approx(1.0)
    assert check["residual_share"] == pytest.approx(0.25)


def test_frames_a_stage_skipped_are_left_out_of_the_decomposition() -> None:
    recorder = TimelineRecorder(["detect", "track"])
    good, bad = Batch([_frame(0, 0)]), Batch([_frame(1, 5)])
    recorder.on_stage("detect", good, 10, 20)
    recorder.on_stage("track", good, 20, 30)
    recorder.on_output(good, 40)
    recorder.on_stage("detect", bad, 50, 60)  # failed in detect under the skip policy: no track
    recorder.on_output(bad, 70)
    timeline = recorder.timeline()
    assert timeline.complete.tolist() == [True, False]
    assert decompose(timeline)["end_to_end"].size == 1


def test_warmup_mask_drops_the_first_frames_of_each_source() -> None:
    recorder = TimelineRecorder([])
    for index in range(4):
        for source in ("a", "b"):
            recorder.on_output(Batch([_frame(index, index, source)]), index + 1)
    mask = warmup_mask(recorder.timeline(), 3)
    assert mask.sum() == 2
    assert sorted(recorder.timeline().source_ids[mask].tolist()) == ["a", "b"]


# --- keeping up and cameras per machine ----------------------------------------------------


def _run(streams: int, fps: float, age_p99_ms: float, source_fps: float = 30.0) -> dict[str, Any]:
    detail = {
        f"cam{i}": {"fps": fps, "source_fps": source_fps, "end_to_end_ms": {"p99_ms": age_p99_ms}}
        for i in range(streams)
    }
    return {"streams": streams, "streams_detail": detail}


@pytest.mark.parametrize(
    ("fps", "age_ms", "expected"),
    [(30.0, 50.0, True), (28.6, 50.0, True), (28.4, 50.0, False), (30.0, 201.0, False)],
)
def test_keeps_up_needs_the_source_rate_within_tolerance_and_a_bounded_age(
    fps: float, age_ms: float, expected: bool
) -> None:
    options = BenchOptions(pipeline="p", source="s", out_dir=Path("."), fps_tolerance=0.05, max_age_ms=200.0)
    assert keeps_up(_run(2, fps, age_ms), options) is expected


@pytest.mark.parametrize(
    ("streams", "fps", "live", "kind", "expected"),
    [
        ((10,), 15.0, False, "file", True),  # a pace is only a live replay's: `--streams 10 --fps 15`
        ((10,), None, False, "file", False),  # one count, no pace: the file as fast as it goes
        ((1, 2), None, False, "file", True),  # a sweep
        ((1,), None, True, "file", True),
        ((4,), 15.0, False, "test", False),  # not a file: nothing to replay
    ],
)
def test_a_file_with_a_pace_or_a_sweep_is_replayed_live(
    streams: tuple[int, ...], fps: float | None, live: bool, kind: str, expected: bool
) -> None:
    options = BenchOptions(pipeline="p", source="s", out_dir=Path("."), streams=streams, fps=fps, live=live)
    assert replays_live(options, kind) is expected


def test_cameras_per_machine_is_the_largest_count_with_every_smaller_one_passing() -> None:
    options = BenchOptions(pipeline="p", source="s", out_dir=Path("."))
    runs = [
        {"streams": 1, "keeps_up": True},
        {"streams": 2, "keeps_up": True},
        {"streams": 4, "keeps_up": False},
        {"streams": 8, "keeps_up": True},
    ]
    result = cameras_per_machine(runs, options)
    assert result["cameras_per_machine"] == 2 and result["at_least"] is False
    result = cameras_per_machine(runs[:2], options)
    assert result["cameras_per_machine"] == 2 and result["at_least"] is True
    assert cameras_per_machine([{"streams": 1, "keeps_up": False}], options)["cameras_per_machine"] == 0


# --- the live replay source ----------------------------------------------------------------


class _ListSource:
    def __init__(self, count: int, fps: float = 100.0) -> None:
        self.count, self.fps = count, fps

    def open(self) -> SourceInfo:
        return SourceInfo(
            source_id="file",
            uri="memory",
            width=4,
            height=4,
            fps=self.fps,
            live=False,
            frame_count=self.count,
        )

    def frames(self) -> Iterator[Frame]:
        for index in range(self.count):
            yield _frame(index, time.monotonic_ns(), "file")

    def close(self) -> None:
        pass


def test_replay_paces_frames_at_the_requested_rate_and_loops() -> None:
    # A buffer as long as the test, so a reader that a busy machine delays drops nothing;
    # dropping when the reader is slow is the next test's subject.
    source = LiveReplaySource(
        lambda: _ListSource(5), source_id="cam7", fps=50.0, loop=True, max_buffered_frames=12
    )
    info = source.open()
    assert info.live and info.fps == 50.0 and info.source_id == "cam7"
    frames = []
    try:
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 12:
                break
    finally:
        source.close()
    assert [frame.index for frame in frames] == list(range(12))  # across two loops of 5
    # Paced: never faster than 50 fps (a busy machine can only make releases later).
    gaps_ms = np.diff([frame.capture_ns for frame in frames]) / 1e6
    assert (frames[-1].capture_ns - frames[0].capture_ns) / 1e6 >= 11 * 20.0 - 2.0
    assert np.median(gaps_ms) >= 18.0
    assert np.diff([frame.pts_ns for frame in frames]).tolist() == [20_000_000] * 11


def test_replay_drops_stale_frames_like_a_camera_when_the_reader_is_slow() -> None:
    source = LiveReplaySource(
        lambda: _ListSource(200), source_id="cam0", fps=200.0, loop=False, max_buffered_frames=2
    )
    source.open()
    received = []
    try:
        for frame in source.frames():
            received.append(frame.index)
            time.sleep(0.02)  # four frame periods per frame read
            if len(received) == 10:
                break
    finally:
        source.close()
    assert source.dropped_frames > 0
    assert max(np.diff(received)) > 1  # gaps in the index where frames were dropped


def test_replay_at_a_lower_rate_keeps_every_nth_frame_of_the_recording() -> None:
    seen: list[int] = []

    class Recording(_ListSource):
        def frames(self) -> Iterator[Frame]:
            for frame in super().frames():
                seen.append(frame.index)
                yield frame

    source = LiveReplaySource(
        lambda: Recording(12, fps=100.0), source_id="cam0", fps=25.0, loop=False, max_buffered_frames=16
    )
    source.open()
    try:
        frames = list(source.frames())
    finally:
        source.close()
    assert len(frames) == 3  # 12 frames at 100 fps = 0.12 s of scene at 25 fps


# --- the command, end to end ---------------------------------------------------------------


def _write_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "sleepy.yaml"
    path.write_text(
        "stages:\n"
        "  - stage: tests.cli.test_bench:SleepStage\n"
        "    name: slow\n"
        f"    sleep_ms: {SLEEP_MS}\n"
        "  - stage: track\n"
    )
    return path


def test_bench_pipeline_writes_json_markdown_and_plots_whose_parts_add_up(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "pipeline",
            str(_write_pipeline(tmp_path)),
            "--source",
            "synthetic://traffic?width=96&height=64&frames=60&render=0",
            "--frames",
            "60",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    for name in ("bench.md", "latency_cdf.png", "timeline.png", "throughput_vs_streams.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "outputs" / "streams_1" / "events.jsonl").is_file()
    assert report["stages"] == ["slow", "track"]
    (run,) = report["runs"]
    assert run["frames_written"] == 60 and run["frames_measured"] == 50  # 10 warm-up frames
    latency = run["latency_ms"]
    assert set(latency) >= {"end_to_end", "stages", "queueing", "batch_fill", "queue", "handoff", "sink"}
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        assert key in latency["stages"]["slow"] and key in latency["end_to_end"]
    assert latency["stages"]["slow"]["p50_ms"] >= SLEEP_MS
    assert run["throughput_fps"]["total"] > 0 and run["throughput_fps"]["per_stream"]["cam0"] > 0
    assert run["resources"]["cpu_percent"] >= 0 and run["resources"]["peak_rss_mb"] > 0
    assert run["resources"]["gpu"] == "n/a"
    check = run["decomposition"]
    assert check["reference"] == "pipeline metrics" and check["frames"] == 50
    assert abs(check["residual_ms"]) <= 0.01 * check["end_to_end_ms"] + 0.01
    means = run["mean_ms"]
    assert sum(v for k, v in means.items() if k != "end_to_end") == pytest.approx(
        means["end_to_end"], abs=0.01
    )
    assert "| stage `slow` |" in (out / "bench.md").read_text()


def test_bench_sweep_replays_a_file_as_live_streams_and_reports_cameras_per_machine(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(30):
            image = np.full((48, 64, 3), index * 8, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    out = tmp_path / "sweep"
    code = main(
        [
            "bench",
            "pipeline",
            str(_write_pipeline(tmp_path)),
            "--source",
            str(video),
            "--streams",
            "1,2",
            "--duration",
            "1.0",
            "--warmup-frames",
            "3",
            "--max-age-ms",
            "1000",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["live"] is True
    assert [run["streams"] for run in report["runs"]] == [1, 2]
    two = report["runs"][1]
    assert sorted(two["streams_detail"]) == ["cam0", "cam1"]
    assert all(stream["source_fps"] == pytest.approx(30.0) for stream in two["streams_detail"].values())
    scaling = report["scaling"]
    assert scaling["tested_streams"] == [1, 2]
    assert scaling["cameras_per_machine"] in (0, 1, 2)
    assert "frame_age_p99_max_ms" in scaling["criteria"]
    assert "## Cameras per machine" in (out / "bench.md").read_text()


def test_bench_rejects_duration_together_with_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "bench",
                "pipeline",
                "x.yaml",
                "--source",
                "a.mp4",
                "--frames",
                "5",
                "--duration",
                "1",
                "-o",
                str(tmp_path),
            ]
        )
    assert "not allowed with argument" in capsys.readouterr().err


# --- regression comparison -------------------------------------------------------------------


def test_regression_flags_only_moves_beyond_the_noise_in_the_right_direction() -> None:
    baseline = {
        "fps": {"value": 100.0, "noise": 0.04, "better": "higher"},
        "p50_ms": {"value": 10.0, "noise": 0.02, "better": "lower"},
        "ratio": {"value": 2.0, "noise": None, "better": ""},
        "gone": {"value": 1.0, "noise": None, "better": "higher"},
    }
    current = {
        "fps": {"value": 93.0, "noise": 0.10, "better": "higher"},  # -7 % within a 10 % noise
        "p50_ms": {"value": 12.0, "noise": 0.03, "better": "lower"},  # +20 %: worse
        "ratio": {"value": 2.5, "noise": None, "better": ""},  # +25 %, no direction
        "added": {"value": 3.0, "noise": None, "better": "higher"},
    }
    rows = {row["name"]: row for row in regression.compare_figures(baseline, current, min_noise=0.05)}
    assert rows["fps"]["verdict"] == "same" and rows["fps"]["threshold"] == pytest.approx(0.10)
    assert rows["p50_ms"]["verdict"] == "worse" and rows["p50_ms"]["change"] == pytest.approx(0.2)
    assert rows["ratio"]["verdict"] == "moved"
    assert rows["gone"]["verdict"] == "missing" and rows["added"]["verdict"] == "new"
    faster = regression.compare_figures(
        baseline, {"fps": {"value": 120.0, "noise": 0.01, "better": "higher"}}
    )
    assert faster[[row["name"] for row in faster].index("fps")]["verdict"] == "better"
    assert "**WORSE**" in regression.render(list(rows.values()))


def test_regression_figure_takes_the_median_and_the_relative_spread() -> None:
    value = regression.figure([10.0, 12.0, 11.0], unit="fps", better="higher")
    assert value["value"] == 11.0 and value["noise"] == pytest.approx(2 / 11, abs=1e-4)
    assert regression.figure([5.0], unit="fps", better="higher")["noise"] is None
    assert regression.figure([0.0, 0.0], unit="ms", better="lower")["noise"] is None  # no relative spread


def test_the_committed_baseline_is_readable() -> None:
    baseline = json.loads((REPO_ROOT / "benchmarks" / "baseline.json").read_text())
    assert baseline["figures"] and "machine" in baseline
    for values in baseline["figures"].values():
        assert {"value", "noise", "better"} <= set(values)


def test_recorder_is_safe_to_share_between_threads() -> None:
    recorder = TimelineRecorder(["a"])

    def feed(source: str) -> None:
        for index in range(200):
            batch = Batch([_frame(index, index, source)])
            recorder.on_stage("a", batch, index + 1, index + 2)
            recorder.on_output(batch, index + 3)

    threads = [threading.Thread(target=feed, args=(f"s{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recorder.timeline()) == 800


@pytest.mark.parametrize(
    ("recording_fps", "fps", "expected"),
    [(60.0, 15.0, 4), (30.0, 15.0, 2), (60.0, 25.0, 1), (25.0, 25.0, 1), (15.0, 30.0, 1), (None, 15.0, 1)],
)
def test_replay_decimation_only_at_whole_ratios(
    recording_fps: float | None, fps: float, expected: int
) -> None:
    assert replay_decimation(recording_fps, fps) == expected


def test_a_decimated_recording_replays_the_same_frames(highway_video: Path) -> None:
    """A reader that skips 3 frames in 4 gives a 15 fps replay of the 60 fps file the same frames."""
    from engine.sources import open_source

    def replayed(keep_every: int) -> list[tuple[int, bytes]]:
        replay = LiveReplaySource(
            lambda: open_source(str(highway_video), backend="av", keep_every=keep_every),
            source_id="cam0",
            fps=15.0,
            loop=False,
            max_buffered_frames=64,  # nothing dropped: the frames themselves are compared
        )
        replay.open()
        try:
            return [(frame.index, frame.image.tobytes()) for frame in itertools.islice(replay.frames(), 8)]
        finally:
            replay.close()

    assert replayed(4) == replayed(1)


def test_the_comparison_note_names_the_classes_each_tool_ran() -> None:
    import compare  # benchmarks/compare.py

    def report(*tools: str) -> dict[str, Any]:
        values = {"fps": 10.0, "ratios_to_vistream": {"fps": 1.0}}
        return {
            "machine": {"cpu": "test CPU", "cpus": 2},
            "video": "v.avi",
            "model": "m.onnx",
            "frames": 10,
            "warmup_frames": 2,
            "repeats": 1,
            "draw_and_write_video": False,
            "tools": {tool: values for tool in tools},
        }

    # The CPU tools run the `default` pipeline (every class), the speed tools the vehicles.
    assert "NMS IoU 0.7, every class;" in compare.render_markdown(report("vs_ov_int8", "ul_onnx"))
    speed_only = compare.render_markdown(report("vistream", "ultralytics"))
    assert "classes car, truck, bus, motorcycle;" in speed_only
    mixed = compare.render_markdown(report("vistream", "vs_ort"))
    assert "classes car, truck, bus, motorcycle (vs_ort: every class);" in mixed
