"""Stops as the operating system delivers them: bursts, SIGHUP, `timeout`, a stop that hangs.

The unit tests drive :class:`engine.cli.signals.StopSignals` with real signals sent to this
process; the CLI tests run `vistream run` as a user would and check every output after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.cli.signals import StopSignals
from engine.sources import gstreamer_available
from tests.cli.test_cli import decoded_frame_count
from tests.cli.test_shutdown import complete_records, wait_for_lines
from tests.conftest import REPO_ROOT, SHARED_DIR

LIVE = "test://?width=160&height=120&fps=30"

# The two unit tests below send real signals to their own process. In the whole suite's
# process, after GStreamer, OpenVINO and gRPC threads were started by earlier tests, a signal
# delivered there crashed the interpreter (SIGSEGV in a native thread), so they run in a fresh
# interpreter of their own, started by the last test here.
_OWN_PROCESS = os.environ.get("VISTREAM_SIGNAL_UNIT_TESTS") == "1"
own_process = pytest.mark.skipif(
    not _OWN_PROCESS, reason="runs in a fresh process: test_signal_unit_tests_pass_in_a_fresh_process"
)


def test_signal_unit_tests_pass_in_a_fresh_process() -> None:
    if _OWN_PROCESS:
        pytest.skip("this is the fresh process")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "unit_"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={**os.environ, "VISTREAM_SIGNAL_UNIT_TESTS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-2000:]


@own_process
def test_unit_a_burst_of_signals_is_one_stop_and_a_later_one_forces_the_exit() -> None:
    stops, forced = [], []
    now = [100.0]
    handler = StopSignals(
        lambda: stops.append(1), on_force=forced.append, grace_s=1.0, exit=forced.append, clock=lambda: now[0]
    )
    with handler:
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            os.kill(os.getpid(), signum)  # handled before os.kill returns (main thread)
        assert stops == [1] and forced == [] and handler.received == 4
        assert handler.signal_name == "SIGTERM"
        now[0] += 1.5
        os.kill(os.getpid(), signal.SIGHUP)
        assert forced == [signal.SIGHUP, 128 + signal.SIGHUP]  # on_force, then the exit code
    assert signal.getsignal(signal.SIGTERM) is not handler._handle  # restored


@own_process
def test_unit_a_stop_that_does_not_end_is_forced_after_the_deadline() -> None:
    forced = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        forced.set()

    with StopSignals(lambda: None, deadline_s=0.2, exit=fake_exit):
        os.kill(os.getpid(), signal.SIGTERM)
        assert forced.wait(5)
    assert codes == [128 + signal.SIGTERM]


def start(out: Path, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", *args, "--out", str(out), "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def light_pipeline(tmp: Path, extra: str = "") -> str:
    path = tmp / "light.yaml"
    path.write_text("stages:\n  - stage: track\n" + extra + "  - stage: annotate\n")
    return str(path)


def assert_complete_stop(out: Path, *, frames_required: bool = True) -> None:
    """summary.json says stopped and the MP4 holds as many frames as events.jsonl has lines."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped", summary["status"]
    lines = (out / "events.jsonl").read_text()
    count = lines.count("\n")
    assert summary["frames"] == count and lines.endswith("\n" if count else "")
    if count or frames_required:  # a loaded machine may still be loading the model at the stop
        assert count > 0
        assert decoded_frame_count(out / "annotated.mp4")[0] == count
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["files"]["video"]["file"] == "annotated.mp4"


@pytest.mark.gst
@pytest.mark.fault(
    "A burst of stop signals: `timeout` (child, then its process group), a group kill, SIGTERM + "
    "SIGHUP from a service manager, three times in a row",
    "One graceful stop (signals within 1 s of the first are the same stop): exit 0, "
    "`summary.json` `stopped`, an MP4 with as many frames as `events.jsonl` has lines",
)
def test_a_burst_of_signals_to_the_process_group_is_one_graceful_stop(tmp_path: Path) -> None:
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        process = start(out, LIVE, "--pipeline", light_pipeline(tmp_path), new_session=True)
        wait_for_lines(out / "events.jsonl", 20, process)
        process.send_signal(signal.SIGTERM)  # what `timeout` does: the child...
        os.killpg(process.pid, signal.SIGTERM)  # ...then its whole group
        os.killpg(process.pid, signal.SIGHUP)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert stderr.count("stopping after the frames in flight") == 1, stderr
        assert_complete_stop(out)


@pytest.mark.gst
@pytest.mark.slow
@pytest.mark.fault(
    "`timeout 12 vistream run test://... --out X` (the default pipeline with detection)",
    "`summary.json` and an MP4 with as many frames as `events.jsonl` has lines (measured 10 of 10 "
    "with `timeout 12`)",
)
def test_timeout_command_leaves_complete_outputs(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    out = tmp_path / "out"
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    command = [sys.executable, "-m", "engine.cli", "run", "test://?width=320&height=240&fps=15"]
    result = subprocess.run(
        ["timeout", "12", *command, "--out", str(out), "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 124, result.stderr  # timeout's own code: it had to stop it
    assert_complete_stop(out, frames_required=False)


@pytest.mark.gst
@pytest.mark.fault(
    "SIGHUP (the terminal closed, an SSH session dropped)",
    "The same graceful stop as SIGTERM: exit 0, every output finalized, `summary.json` `stopped`",
)
def test_sighup_stops_like_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = start(out, LIVE, "--pipeline", light_pipeline(tmp_path))
    wait_for_lines(out / "events.jsonl", 20, process)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert_complete_stop(out)


@pytest.mark.gst
@pytest.mark.slow
@pytest.mark.fault(
    "SIGTERM while a stage hangs in `__call__` (no watchdog: a file source)",
    "The stop is bounded: after `--drain-timeout-s` + 10 s the process exits (128 + signal) "
    "with `summary.json` marked `interrupted`, complete JSONL lines and a playable MP4",
)
def test_a_stop_held_up_by_a_hanging_stage_is_forced_after_the_deadline(tmp_path: Path) -> None:
    # events.jsonl is written 2 s of stream time behind (one class per track): at 30 fps,
    # frame 90 is reached with 30 lines written and 60 held, which the forced stop writes.
    hang = "  - stage: tests.helpers_faults:HangingStage\n    on_frame: 90\n"
    out = tmp_path / "out"
    process = start(
        out,
        "test://?width=160&height=120&frames=100000",
        "--pipeline",
        light_pipeline(tmp_path, hang),
        "--drain-timeout-s",
        "0.5",
    )
    wait_for_lines(out / "events.jsonl", 30, process)
    time.sleep(0.5)
    signalled_s = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - signalled_s < 20
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "did not complete within 10.5 s" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert len(complete_records(out / "events.jsonl")) == 90
    import av

    with av.open(str(out / "annotated.mp4")) as container:  # valid, fragmented
        assert container.streams.video
