"""Graceful shutdown of `vistream run`: SIGTERM drains and finalizes, a second signal exits now.

Every run here has several sources (tests/test_cli.py covers one file); a stage of
:mod:`tests.helpers_live` slows the pipeline down so the signals land mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.sources import gstreamer_available
from tests.cli.test_cli import decoded_frame_count
from tests.conftest import REPO_ROOT, SHARED_DIR, shared_path

pytestmark = pytest.mark.gst


def start(out: Path, pipeline: Path, *sources: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            *sources,
            "--pipeline",
            str(pipeline),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def slow_pipeline(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "slow.yaml"
    path.write_text(
        "batch_size: 2\nstages:\n  - stage: track\n"
        f"  - stage: tests.helpers_live:SleepStage\n    seconds: {seconds}\n  - stage: annotate\n"
    )
    return path


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or path.read_text().count("\n") < count:
        if process.poll() is not None:
            raise AssertionError(f"vistream ended early: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"fewer than {count} lines in {path} after {timeout_s} s")
        time.sleep(0.05)


def complete_records(path: Path) -> list[dict]:
    """Every complete line parses (a line cut by a kill has no newline and is left out)."""
    text = path.read_text()
    lines = text.split("\n")
    return [json.loads(line) for line in lines[:-1]]


def sources(tmp_path: Path) -> list[str]:
    highway = shared_path("media/traffic/highway_overpass_320x240_60fps.avi")
    people = shared_path("media/people/pedestrians_768x576_10fps.avi")
    return [str(highway), str(people), "test://?width=160&height=120&fps=30"]


@pytest.mark.fault(
    "SIGTERM / Ctrl-C mid-run (one or many sources)",
    "Intake stops, queued frames drained (`--drain-timeout-s`, 10 s default), every sink finalized: "
    'playable MP4s with every written frame, complete JSONL, `summary.json` with `"status": "stopped"`, '
    "exit 0",
)
def test_sigterm_mid_run_finalizes_every_source(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = start(out, slow_pipeline(tmp_path, 0.01), *sources(tmp_path))
    wait_for_lines(out / "events.jsonl", 60, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    text = (out / "events.jsonl").read_text()
    assert text.endswith("\n")
    events = complete_records(out / "events.jsonl")  # complete: every line parses
    counts = Counter(event["source"] for event in events)
    assert len(counts) == 3 and min(counts.values()) > 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["frames"] == len(events)
    assert summary["frames_out"] == dict(counts)
    for source_id, count in counts.items():
        # Finalized: the encoder was drained, so the mp4 holds every frame written.
        assert decoded_frame_count(out / f"annotated_{source_id}.mp4")[0] == count
        frames = [event["frame"] for event in events if event["source"] == source_id]
        assert frames == sorted(set(frames))


@pytest.mark.fault(
    "A stop with more queued frames than the drain timeout allows",
    "Frames left after `--drain-timeout-s` are discarded with a warning; outputs finalized; `stopped`",
)
def test_drain_timeout_bounds_the_time_to_stop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 0.3 s per batch of 2 and up to 8 queued frames per file: draining all would take ~2.5 s.
    process = start(
        out, slow_pipeline(tmp_path, 0.3), *sources(tmp_path)[:2], extra=("--drain-timeout-s", "0.2")
    )
    wait_for_lines(out / "events.jsonl", 4, process)
    signalled_s = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    stopped_s = time.monotonic() - signalled_s
    assert process.returncode == 0, stderr
    assert stopped_s < 2.5, stopped_s
    assert "queued frames were not processed" in stderr
    events = complete_records(out / "events.jsonl")
    for source_id, count in Counter(event["source"] for event in events).items():
        assert decoded_frame_count(out / f"annotated_{source_id}.mp4")[0] == count
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.fault(
    "A second SIGTERM / Ctrl-C more than 1 s after the first",
    "Exits at once (code 128 + signal) with `summary.json` marked `interrupted`; JSONL lines and "
    "MP4 fragments already written stay valid",
)
def test_second_signal_exits_at_once_leaving_valid_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # 0.5 s per batch of 2: draining the queued frames takes longer than the grace window.
    process = start(out, slow_pipeline(tmp_path, 0.5), *sources(tmp_path), extra=("--drain-timeout-s", "30"))
    wait_for_lines(out / "events.jsonl", 20, process, timeout_s=120)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # past the grace window: a burst from one `timeout` would be within it
    signalled_s = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - signalled_s < 2
    assert process.returncode == 128 + signal.SIGTERM, stderr
    events = complete_records(out / "events.jsonl")
    assert len(events) >= 20
    import av

    videos = [out / f"annotated_{source_id}.mp4" for source_id in Counter(e["source"] for e in events)]
    for video in videos:
        if video.exists():  # a source with a frame or two may have no packet out of the encoder yet
            # Not finalized, yet valid: the file opens (a kill loses the open fragment, up to
            # a keyframe interval, and the encoder's lookahead).
            with av.open(str(video)) as container:
                assert container.streams.video
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
