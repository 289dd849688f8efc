"""Secrets in source URIs: parsed whatever they contain, masked wherever they could show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.sources import gstreamer_available
from engine.sources.uri import mask_credentials, parse_uri
from tests.conftest import REPO_ROOT, SHARED_DIR
from tests.helpers_live import RtspCamera, free_port, rtsp_server_available

PASSWORD = "pa ss/w?rd#x@!"  # a space, a slash, '?', '#', '@': all legal in a camera password
TOKEN = "tok3n-Secret"


@pytest.mark.parametrize(
    ("uri", "location", "display", "user", "password"),
    [
        (
            f"rtsp://admin:{PASSWORD}@cam.local:8554/live?token={TOKEN}&x=1",
            f"rtsp://cam.local:8554/live?token={TOKEN}&x=1",
            "rtsp://admin:***@cam.local:8554/live?token=***&x=1",
            "admin",
            PASSWORD,
        ),
        (
            "rtsp://op%40site:p%2Fw@10.0.0.5/s",
            "rtsp://10.0.0.5/s",
            "rtsp://op%40site:***@10.0.0.5/s",
            "op@site",
            "p/w",
        ),
        (
            "rtsp://viewer@[fe80::1]:554/s",
            "rtsp://[fe80::1]:554/s",
            "rtsp://viewer@[fe80::1]:554/s",
            "viewer",
            None,
        ),
        ("rtsp://host/path@odd", "rtsp://host/path@odd", "rtsp://host/path@odd", None, None),
    ],
)
def test_userinfo_with_any_characters_is_split_from_the_location(
    uri: str, location: str, display: str, user: str | None, password: str | None
) -> None:
    parsed = parse_uri(uri)
    assert (parsed.location, parsed.display, parsed.username, parsed.password) == (
        location,
        display,
        user,
        password,
    )
    assert PASSWORD not in repr(parsed) and "p/w" not in repr(parsed)


def test_registered_secrets_are_masked_in_any_text() -> None:
    parse_uri(f"rtsp://admin:{PASSWORD}@cam.local/live?password=Hunter22&api_key=k3y-v4lue")
    text = f"error: could not connect ({PASSWORD}); GET /live?password=Hunter22&api_key=k3y-v4lue"
    masked = mask_credentials(text)
    assert PASSWORD not in masked and "Hunter22" not in masked and "k3y-v4lue" not in masked
    assert (
        mask_credentials("see rtsp://u:p@h/x and http://a:b c@d/")
        == "see rtsp://u:***@h/x and http://a:b c@d/"
    )


@given(st.text(min_size=3, max_size=30).filter(lambda s: s.strip() == s and "\0" not in s))
def test_any_password_is_masked_in_the_display_and_in_messages(password: str) -> None:
    from urllib.parse import quote

    for written in (password, quote(password, safe="")):
        try:
            parsed = parse_uri(f"rtsp://admin:{written}@cam.example:554/stream")
        except Exception as error:  # a password that makes the URI malformed: still masked
            assert written not in str(error) or len(written) < 3
            continue
        assert parsed.password is not None
        assert written not in parsed.display.replace("admin", "").replace("cam.example", "")
        assert password not in mask_credentials(f"failed: {parsed.password} at {written}")


def run_vistream(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "-v", "run", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "VISTREAM_SHARED": str(SHARED_DIR), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.gst
@pytest.mark.fault(
    "An RTSP password with a space, `/`, `?`, `#` or `@`, or a secret in the query string "
    "(`?token=`, `?password=`)",
    "Masked in every log line (`-v`), error, `summary.json`, `events.jsonl` and in the process "
    "title (`/proc/PID/cmdline`, what `ps` shows)",
)
def test_secrets_never_show_in_logs_outputs_or_the_process_title(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    port = free_port()
    uri = f"rtsp://admin:{PASSWORD}@127.0.0.1:{port}/cam?token={TOKEN}"
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n")
    out = tmp_path / "out"
    process = run_vistream(
        [uri, "--pipeline", str(tmp_path / "p.yaml"), "--out", str(out), "--status-interval-s", "0.2"]
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / ".vistream.lock").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        time.sleep(1.5)  # connection attempts fail and are logged
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode("utf-8", "replace")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert "127.0.0.1" in cmdline and "run" in cmdline
    assert PASSWORD not in cmdline and TOKEN not in cmdline and "pa ss" not in cmdline
    assert "rtsp://admin:***@127.0.0.1" in stderr and "token=***" in stderr
    shown = stderr + (out / "summary.json").read_text() + (out / "events.jsonl").read_text()
    for secret in (PASSWORD, TOKEN, "pa ss", "w?rd"):
        assert secret not in shown, secret
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.gst
@pytest.mark.fault(
    "`GST_DEBUG=rtspsrc:6` (GStreamer's own debug log) with a password in the URI",
    "The password is never in GStreamer's output: rtspsrc gets the location without credentials "
    "and the user and password as its `user-id`/`user-pw` properties",
)
def test_gstreamer_debug_log_never_sees_the_password(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    if (reason := rtsp_server_available()) is not None:
        pytest.skip(reason)
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n")
    with RtspCamera() as camera:
        url = camera.url(f"admin:{PASSWORD.replace('/', '%2F').replace('?', '%3F').replace('#', '%23')}")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "run",
                url,
                "--max-frames",
                "5",
                "--pipeline",
                str(tmp_path / "p.yaml"),
            ]
            + ["--out", str(tmp_path / "out"), "--quiet"],
            cwd=REPO_ROOT,
            env={**os.environ, "GST_DEBUG": "rtspsrc:6", "GST_DEBUG_NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rtspsrc" in result.stderr  # the debug log was on
    for secret in ("pa ss", "pa%20ss", "w%3Frd", "w?rd"):
        assert secret not in result.stderr, secret
