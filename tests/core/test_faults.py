"""Bad inputs and faults the README's fault table lists that no other test file covers.

Each test is one row (or a few) of that table: what goes wrong, and what the engine does —
a user error is one line on stderr and exit code 2, never a traceback; outputs written so far
stay valid; one failing source does not stop the others; secrets never leave masked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.frame import Frame
from engine.pipeline import Pipeline
from engine.sinks import JsonlSink
from engine.sources import gstreamer_available
from engine.stage import NamedStage
from tests.cli.test_cli import read_events, vistream
from tests.conftest import REPO_ROOT, SHARED_DIR
from tests.helpers import ListSource, ProbeStage, make_frame
from tests.helpers_live import RtspCamera, free_port, rtsp_server_available

CALIBRATION = REPO_ROOT / "calibrations" / "highway_overpass.yaml"


def needs_gst() -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("vistream: error: "), result.stderr
    return lines[-1]


# -- frames without pixels ----------------------------------------------------------------------


class BrokenDecoder(ListSource):
    """Yields 10 frames; frames 3, 5 and 7 have no usable picture."""

    def frames(self) -> Iterator[Frame]:
        for index in range(10):
            frame = make_frame(index, source_id=self.source_id)
            if index == 3:
                frame.image = np.zeros((0, 0, 3), np.uint8)
            elif index == 5:
                frame.image = np.zeros((48, 0, 3), np.uint8)
            elif index == 7:
                frame.image = None
            yield frame


@pytest.mark.fault(
    "Zero-size frames (a broken decoder delivers 0×0 or no picture)",
    "Dropped before any stage sees them, counted (`frames_invalid`, `vistream_frames_invalid_total`), "
    "logged once",
)
def test_zero_size_frames_are_dropped_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sink = JsonlSink(tmp_path / "events.jsonl")
    metrics = Pipeline([NamedStage("probe", ProbeStage())]).run(BrokenDecoder(10), [sink])
    written = [json.loads(line)["frame"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert written == [0, 1, 2, 4, 6, 8, 9]
    assert metrics.frames_invalid["cam0"] == 3 and metrics.frames_in["cam0"] == 10
    assert sum("dropping such frames" in record.message for record in caplog.records) == 1


# -- one clear line, exit code 2 ------------------------------------------------------------------


def _empty_video(tmp: Path) -> list[str]:
    (tmp / "empty.mp4").write_bytes(b"")
    return [str(tmp / "empty.mp4")]


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "taken").write_text("a file where the output folder should go")
    return ["test://?frames=3", "--out", str(tmp / "taken" / "out")]


def _python_tag_yaml(tmp: Path) -> list[str]:
    (tmp / "evil.yaml").write_text(f"stages: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n")
    return ["test://?frames=3", "--pipeline", str(tmp / "evil.yaml")]


def _calibration_pipeline(tmp: Path, calibration: Path) -> str:
    path = tmp / "speed.yaml"
    path.write_text(f"stages:\n  - stage: track\n  - stage: speed\n    calibration: {calibration}\n")
    return str(path)


def _calibration_of_other_size(tmp: Path) -> list[str]:
    return ["test://?width=160&height=120&frames=5", "--pipeline", _calibration_pipeline(tmp, CALIBRATION)]


def _malformed_calibration(tmp: Path) -> list[str]:
    text = CALIBRATION.read_text().replace("- [192.43, 98.14]\n", "")  # 3 points left
    (tmp / "three_points.yaml").write_text(text)
    return [
        "test://?width=320&height=240&frames=5",
        "--pipeline",
        _calibration_pipeline(tmp, tmp / "three_points.yaml"),
    ]


def _metrics_port_in_use(tmp: Path) -> list[str]:
    return ["test://?frames=3", "--metrics-port", "{busy_port}"]


FAULTS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "empty (0-byte) video file": (_empty_video, "empty.mp4"),
    "unsupported URI scheme": (
        lambda tmp: ["ftp://example.com/a.mp4"],
        "unsupported source URI scheme 'ftp'",
    ),
    "RTSP URI without a host": (lambda tmp: ["rtsp:///stream"], "RTSP URI has no host"),
    "zero-size test picture": (lambda tmp: ["test://?width=0"], "'width' must be a positive integer"),
    "output folder is a file": (_out_is_a_file, "cannot create output directory"),
    "YAML with a Python object tag": (_python_tag_yaml, "malformed YAML"),
    "calibration of another image size": (
        _calibration_of_other_size,
        "calibrated on 320x240 images, but source 'test' delivers 160x120",
    ),
    "calibration with 3 points": (_malformed_calibration, "exactly 4 points"),
    "metrics port already in use": (_metrics_port_in_use, "cannot serve metrics on 127.0.0.1:"),
}


@pytest.mark.fault(
    "Empty (0-byte) video, `ftp://` URI, `rtsp://` without a host, `test://?width=0`, output folder is a "
    "file, YAML with a Python object tag (`!!python/object/apply:os.system`), calibration of another "
    "image size or with 3 points, metrics port in use",
    "User error (exit 2, one line) naming the problem; the YAML tag is refused by the safe loader and "
    "nothing is executed",
)
@pytest.mark.parametrize("case", list(FAULTS))
def test_user_errors_exit_2_with_one_clear_line(case: str, tmp_path: Path) -> None:
    if case != "unsupported URI scheme":
        needs_gst()  # test:// sources
    make_args, expected = FAULTS[case]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        args = [arg.replace("{busy_port}", str(busy.getsockname()[1])) for arg in make_args(tmp_path)]
        if "--out" not in args:
            args += ["--out", str(tmp_path / "out")]
        result = vistream("run", *args, "--quiet", "--no-video", timeout_s=120)
    line = one_error_line(result)
    assert len([text for text in result.stderr.splitlines() if text.strip()]) == 1, result.stderr
    assert expected in line, line
    assert not (tmp_path / "pwned").exists()  # the YAML tag was not executed


@pytest.mark.fault(
    "A pipeline that names one stage",
    "Only that stage's module is imported (a broken optional plugin cannot break other pipelines)",
)
def test_only_the_stages_named_in_the_pipeline_are_imported(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n")
    code = (
        "import sys; from engine.config import load_pipeline; "
        f"load_pipeline({str(tmp_path / 'p.yaml')!r}); "
        "print(sorted(m for m in ('plugins.detect', 'plugins.faces', 'plugins.emotion', "
        "'plugins.speed', 'plugins.track') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "['plugins.track']"


# -- stages that raise ----------------------------------------------------------------------------


def _failing_pipeline(tmp: Path, on_error: str) -> Path:
    path = tmp / f"{on_error}.yaml"
    path.write_text(
        f"on_error: {on_error}\nstages:\n  - stage: tests.helpers_live:FailingStage\n"
        "    name: fragile\n    every: 3\n"
    )
    return path


@pytest.mark.fault(
    "A stage raises on some frames, `on_error: skip`",
    'Frames marked `"skipped"` in the JSONL and still written, counted per `stage: ExceptionType`, logged'
    " once per kind (not per frame)",
)
def test_a_stage_that_raises_is_skipped_counted_and_logged_once(tmp_path: Path) -> None:
    needs_gst()
    out = tmp_path / "out"
    result = vistream(
        "run",
        "test://?width=64&height=48&frames=30",
        "--pipeline",
        str(_failing_pipeline(tmp_path, "skip")),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    assert [e["frame"] for e in events] == list(range(30))  # every frame still written
    assert [e["frame"] for e in events if "skipped" in e] == list(range(2, 30, 3))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_frames"] == 10 and summary["errors"] == {"fragile: ValueError": 10}
    assert result.stderr.count("stage 'fragile' failed on") == 1  # logged once per kind


@pytest.mark.fault(
    "A stage raises, `on_error: fail`",
    "Run stops at once; outputs finalized for every frame before; a non-`EngineError` is a bug in the "
    "stage: exit 1 with its traceback",
)
def test_a_stage_that_raises_under_fail_stops_with_outputs_finalized(tmp_path: Path) -> None:
    needs_gst()
    out = tmp_path / "out"
    result = vistream(
        "run",
        "test://?width=64&height=48&frames=30",
        "--pipeline",
        str(_failing_pipeline(tmp_path, "fail")),
        "--out",
        str(out),
        "--quiet",
    )
    # A non-EngineError from a stage is a bug in that stage: exit 1 with its traceback.
    assert result.returncode == 1 and "ValueError: cannot handle frame 2" in result.stderr
    assert [e["frame"] for e in read_events(out)] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


# -- a full disk ----------------------------------------------------------------------------------


def _assert_disk_full_handled(result: subprocess.CompletedProcess[str], events: Path) -> None:
    line = one_error_line(result)
    assert "No space left on device" in line, line
    text = events.read_text() if events.exists() else ""
    for record in text.split("\n")[:-1]:  # every complete line is a valid record
        json.loads(record)


@pytest.mark.fault(
    "Disk full for the output folder (`/dev/full`; a real 256 KiB tmpfs when run as root)",
    'User error "cannot write … No space left on device"; complete JSONL lines stay valid; the MP4 still '
    "opens; no traceback",
)
def test_disk_full_dev_full(tmp_path: Path) -> None:
    """The JSONL file is a link to /dev/full: every write fails with ENOSPC."""
    needs_gst()
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").symlink_to("/dev/full")
    result = vistream(
        "run",
        "test://?width=64&height=48&frames=50",
        "--pipeline",
        str(_light_pipeline(tmp_path)),
        "--out",
        str(out),
        "--quiet",
        "--no-video",
    )
    _assert_disk_full_handled(result, out / "missing.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"


def _light_pipeline(tmp: Path) -> Path:
    path = tmp / "light.yaml"
    path.write_text("stages:\n  - stage: track\n  - stage: annotate\n")
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_real_tmpfs(tmp_path: Path) -> None:
    """The output folder is a 256 KiB tmpfs that fills up mid-run."""
    needs_gst()
    mount = tmp_path / "small"
    mount.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = vistream(
            "run",
            "test://?width=320&height=240&frames=3000&pattern=snow",
            "--pipeline",
            str(_light_pipeline(tmp_path)),
            "--out",
            str(mount / "out"),
            "--quiet",
            timeout_s=300,
        )
        _assert_disk_full_handled(result, mount / "out" / "events.jsonl")
        import av

        with av.open(str(mount / "out" / "annotated.mp4")) as container:  # still opens
            assert container.streams.video
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- cameras --------------------------------------------------------------------------------------


@pytest.mark.fault(
    "Camera refuses connections with `max_attempts: N`",
    'After N consecutive failures that source fails ("gave up after N failed connection attempts"); the '
    "other sources go on; exit 2 at the end",
)
def test_refused_camera_with_max_attempts_fails_alone(tmp_path: Path) -> None:
    needs_gst()
    port = free_port()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "sources:\n"
        "  - test://?width=64&height=48&frames=40\n"
        f"  - uri: rtsp://admin:hunter2@127.0.0.1:{port}/cam\n"
        "    id: gate\n"
        "    max_attempts: 3\n"
        "    backoff_initial_s: 0.05\n"
        "    backoff_max_s: 0.1\n"
        "stages:\n  - stage: track\n"
    )
    out = tmp_path / "out"
    result = vistream("run", "--pipeline", str(pipeline), "--out", str(out), "--quiet", "--no-video")
    line = one_error_line(result)
    assert "gate" in result.stderr and "gave up after 3 failed connection attempts" in line
    assert "hunter2" not in result.stderr
    assert Counter(e["source"] for e in read_events(out)) == {"test": 40}  # the file went on
    summary = json.loads((out / "summary.json").read_text())
    statuses = {source_id: state["status"] for source_id, state in summary["sources"].items()}
    assert statuses == {"gate": "failed", "test": "ended"}
    assert "hunter2" not in (out / "summary.json").read_text()


@pytest.mark.fault(
    "RTSP path that does not exist (404)",
    'Retried like any failed attempt; with `max_attempts` fails with "Not found (404)", password masked',
)
@pytest.mark.gst
def test_rtsp_path_that_does_not_exist_is_retried_then_fails() -> None:
    needs_gst()
    if (reason := rtsp_server_available()) is not None:
        pytest.skip(reason)
    from engine.errors import SourceError
    from engine.sources.supervised import ReconnectPolicy, open_supervised

    with RtspCamera() as camera:
        source = open_supervised(
            camera.url("admin:hunter2").replace("/cam", "/nope"),
            source_id="x",
            policy=ReconnectPolicy(max_attempts=2, backoff_initial_s=0.05, backoff_max_s=0.1),
        )
        source.open()
        with pytest.raises(SourceError, match=r"gave up after 2 .*Not Found \(404\)") as caught:
            list(source.frames())
    assert "hunter2" not in str(caught.value)


@pytest.mark.fault(
    "RTSP password in the URI of a camera that drops and returns",
    "Masked (`rtsp://admin:***@…`) in every log line, event, error, `summary.json` and metric (metric "
    "labels are source ids only)",
)
@pytest.mark.gst
def test_credentials_are_masked_in_logs_events_summary_and_metrics(tmp_path: Path) -> None:
    needs_gst()
    if (reason := rtsp_server_available()) is not None:
        pytest.skip(reason)
    camera = RtspCamera()
    camera.start()
    out = tmp_path / "out"
    metrics_port = free_port()
    env = {**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "-v",
            "run",
            camera.url("admin:hunter2"),
            "--pipeline",
            str(_light_pipeline(tmp_path)),
            "--out",
            str(out),
            "--metrics-port",
            str(metrics_port),
            "--status-interval-s",
            "0.5",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = out / "events.jsonl"
        _wait(lambda: events.exists() and events.read_text().count("\n") > 10, 30)
        camera.kill()  # a loss and a reconnection: more log lines, events with reasons
        time.sleep(0.5)
        camera.start()
        _wait(lambda: "source_reconnected" in events.read_text(), 30)
        # Let frames flow for a while after the return, so status lines of an "up" camera
        # are printed even on a slow machine (they come every 0.5 s while frames arrive).
        lines_back = events.read_text().count("\n")
        _wait(lambda: events.read_text().count("\n") > lines_back + 20, 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            scraped = reply.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        camera.kill()
    assert process.returncode == 0, stderr
    assert 'vistream_reconnects_total{source="127.0.0.1"} 1.0' in scraped
    assert "rtsp://admin:***@127.0.0.1" in stderr  # the URI is shown, masked
    assert "status: " in stderr and "127.0.0.1: up" in stderr  # the periodic status line
    for name, text in {
        "stderr": stderr,
        "stdout": stdout,
        "metrics": scraped,
        "events": (out / "events.jsonl").read_text(),
        "summary": (out / "summary.json").read_text(),
    }.items():
        assert "hunter2" not in text, name


def _wait(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.05)
