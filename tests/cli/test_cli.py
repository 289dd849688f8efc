"""`vistream` as a user runs it: real media in, files out, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DIR, shared_path


def vistream(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would, from the repository root."""
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout_s,
    )


def read_events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def decoded_frame_count(video: Path) -> tuple[int, float]:
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


def test_version_and_plugins() -> None:
    assert vistream("--version").stdout.startswith("vistream ")
    listing = vistream("plugins").stdout
    for name in ("detect", "track", "annotate"):
        assert any(line.startswith(f"{name} ") for line in listing.splitlines()), listing


@pytest.mark.slow
def test_highway_video_end_to_end(tmp_path: Path, highway_video: Path, yolo_model: Path) -> None:
    out = tmp_path / "highway"
    result = vistream("run", str(highway_video), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    # The AVI header declares 1,700 frames; its packed MPEG-4 stream decodes to 1,699 in every
    # decoder (FFmpeg, GStreamer, OpenCV): compare with what the file really holds.
    input_frames, _ = decoded_frame_count(highway_video)
    events = read_events(out)
    assert len(events) == input_frames
    assert [event["frame"] for event in events] == list(range(input_frames))
    assert events[0]["source"] and events[0]["pts_ns"] == 0
    cars = [
        obj for event in events for obj in event["layers"].get("objects", []) if obj["class_name"] == "car"
    ]
    assert len(cars) > 1000
    assert any(obj["track_id"] is not None for obj in cars)
    frames, fps = decoded_frame_count(out / "annotated.mp4")
    assert (frames, round(fps)) == (input_frames, 60)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["frames"] == input_frames
    assert {"detect", "track", "annotate"} <= set(summary["stage_latency_ms"])
    assert summary["stage_latency_ms"]["detect"]["p99_ms"] >= summary["stage_latency_ms"]["detect"]["p50_ms"]
    # The summary counts classes as the live vote gave them on each frame; events.jsonl gives
    # each track one class (its vote after 2 s): the same detections, a few renamed.
    written = [obj for event in events for obj in event["layers"].get("objects", [])]
    assert sum(summary["detections_per_class"]["objects"].values()) == len(written)
    assert summary["detections_per_class"]["objects"]["car"] == pytest.approx(len(cars), rel=0.05)
    # MOTChallenge rows: frame,id,x,y,w,h,conf,-1,-1,-1 with frames from 1
    rows = [line.split(",") for line in (out / "tracks_objects.txt").read_text().splitlines()]
    assert rows and all(len(row) == 10 for row in rows)
    assert min(int(row[0]) for row in rows) >= 1 and max(int(row[0]) for row in rows) <= input_frames
    assert len({row[1] for row in rows}) == summary["unique_tracks"]["objects"]


def test_people_are_tracked(tmp_path: Path) -> None:
    video = shared_path("media/people/pedestrians_768x576_10fps.avi")
    out = tmp_path / "people"
    result = vistream("run", str(video), "--out", str(out), "--max-frames", "60", "--no-video", "--quiet")
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    assert len(events) == 60
    people = [obj for event in events for obj in event["layers"]["objects"] if obj["class_name"] == "person"]
    tracked = {obj["track_id"] for obj in people if obj["track_id"] is not None}
    assert len(people) > 100 and len(tracked) >= 3
    assert not (out / "annotated.mp4").exists()


@pytest.mark.gst
def test_test_source(tmp_path: Path) -> None:
    pytest.importorskip("gi")
    out = tmp_path / "test"
    result = vistream("run", "test://?width=160&height=120&fps=30&frames=15", "-o", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(read_events(out)) == 15
    assert decoded_frame_count(out / "annotated.mp4")[0] == 15


def _text_renamed_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    return path


def _bad_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - stage: detect\n    model: [oops\n")
    return path


def _pipeline(tmp_path: Path, stages: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"stages:\n{stages}")
    return path


_DETECT_STAGE = "  - stage: detect\n    model: {model}\n"

BAD_INPUTS = {
    "missing file": (lambda tmp: ["/nonexistent/video.mp4"], "not found"),
    "text file renamed .mp4": (lambda tmp: [str(_text_renamed_mp4(tmp))], "notes.mp4"),
    "malformed yaml": (lambda tmp: ["{video}", "--pipeline", str(_bad_yaml(tmp))], "malformed YAML"),
    "unknown stage": (
        lambda tmp: ["{video}", "--pipeline", str(_pipeline(tmp, "  - stage: detekt\n"))],
        "unknown stage 'detekt'; installed stages:",
    ),
    "wrong stage argument": (
        lambda tmp: ["{video}", "--pipeline", str(_pipeline(tmp, "  - stage: track\n    buffer: 3\n"))],
        "stages[0] (track): unexpected argument 'buffer'",
    ),
    "zero workers": (lambda tmp: ["{video}", "--workers", "0"], "--workers: expected a positive integer"),
    "missing model": (
        lambda tmp: ["{video}", "--pipeline", str(_pipeline(tmp, _DETECT_STAGE.format(model="nope.onnx")))],
        "model file not found",
    ),
    "onnx that is not a yolo detector": (
        lambda tmp: [
            "{video}",
            "--pipeline",
            str(
                _pipeline(
                    tmp,
                    _DETECT_STAGE.format(model=SHARED_DIR / "models/emotion_mini_xception_fer2013_7cls.onnx"),
                )
            ),
        ],
        "not an Ultralytics YOLO detector",
    ),
}


@pytest.mark.fault(
    "Bad command-line inputs: a video file that does not exist, a text file renamed `.mp4`, malformed "
    "pipeline YAML, an unknown stage, a wrong stage argument, `--workers 0`, a missing model, an ONNX "
    "that is not a YOLO detector",
    "User error naming the path, the place (`stages[0] (track): unexpected argument 'buffer'`, with line "
    "and column for YAML) or the problem (`model file not found`, `not an Ultralytics YOLO detector`), "
    "before any model is loaded where it can be",
)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_exit_2_with_one_clear_line(case: str, tmp_path: Path, highway_video: Path) -> None:
    make_args, expected = BAD_INPUTS[case]
    args = [arg.replace("{video}", str(highway_video)) for arg in make_args(tmp_path)]
    result = vistream(
        "run", *args, "--out", str(tmp_path / "out"), "--quiet", "--max-frames", "5", timeout_s=120
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vistream: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.fault(
    "Truncated file (cut mid-stream)",
    "Every decodable frame is processed and written (JSONL, MP4 with the same frame count), then user "
    'error "video file truncated or damaged: decoded N of M declared frames"',
)
def test_truncated_video_keeps_the_frames_before_the_cut(tmp_path: Path, highway_video: Path) -> None:
    truncated = tmp_path / "truncated.avi"
    data = highway_video.read_bytes()
    truncated.write_bytes(data[: len(data) // 4])
    out = tmp_path / "out"
    result = vistream("run", str(truncated), "--out", str(out), "--quiet", timeout_s=300)
    events = read_events(out)
    assert 100 < len(events) < 1700
    assert [event["frame"] for event in events] == list(range(len(events)))
    video_frames, _ = decoded_frame_count(out / "annotated.mp4")
    assert video_frames == len(events)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(events)
    if result.returncode != 0:  # a detected truncation is a user-facing error, never a crash
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_ffprobe_accepts_the_annotated_video(tmp_path: Path, highway_video: Path) -> None:
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe not installed")
    out = tmp_path / "short"
    run = vistream("run", str(highway_video), "--out", str(out), "--max-frames", "30", "--quiet")
    assert run.returncode == 0
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames,avg_frame_rate",
            "-of",
            "json",
            str(out / "annotated.mp4"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream["codec_name"] == "h264"
    assert int(stream["nb_read_frames"]) == 30
    assert stream["avg_frame_rate"] == "60/1"


def test_sigterm_finishes_in_flight_frames_and_finalizes(tmp_path: Path, highway_video: Path) -> None:
    import signal
    import time

    out = tmp_path / "interrupted"
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(highway_video), "--out", str(out), "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events_path = out / "events.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not events_path.exists() or events_path.read_text().count("\n") < 50
    ):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    events = read_events(out)  # every line parses
    assert 50 <= len(events) < 1700
    assert decoded_frame_count(out / "annotated.mp4")[0] == len(events)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["frames"] == len(events)
