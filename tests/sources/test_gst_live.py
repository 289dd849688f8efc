"""GStreamer live and generated sources: test://, RTSP (served in-process), V4L2, stopping."""

from __future__ import annotations

import contextlib
import glob
import socket
import threading
import time

import numpy as np
import pytest

from engine.errors import SourceError
from engine.sources import open_source
from tests.sources.helpers_sources import free_port, h264_encoder, rtsp_server

pytestmark = pytest.mark.gst


def test_finite_test_source() -> None:
    source = open_source("test://?width=160&height=120&fps=30&frames=20", source_id="synthetic")
    info = source.open()
    frames = list(source.frames())
    source.close()
    assert (info.width, info.height, info.fps, info.live, info.frame_count) == (160, 120, 30.0, False, 20)
    assert info.source_id == "synthetic"
    assert [f.index for f in frames] == list(range(20))
    assert {f.source_id for f in frames} == {"synthetic"}
    # videotestsrc's own clock (it floors k/30 s to whole nanoseconds)
    assert [f.pts_ns for f in frames] == [k * 1_000_000_000 // 30 for k in range(20)]
    for frame in frames:
        assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
        assert frame.image.flags["C_CONTIGUOUS"]


def test_odd_size_test_source_has_no_stride_garbage() -> None:
    source = open_source("test://?width=161&height=121&frames=3&pattern=red")
    source.open()
    frames = list(source.frames())
    source.close()
    assert len(frames) == 3
    for frame in frames:
        assert frame.image.shape == (121, 161, 3) and frame.image.flags["C_CONTIGUOUS"]
        # Solid red everywhere, last column and row included: padding bytes did not leak in.
        blue, green, red = (frame.image[..., c].astype(int) for c in range(3))
        assert blue.max() <= 3 and green.max() <= 3 and red.min() >= 250


def test_live_test_source_is_paced_and_stops_from_another_thread() -> None:
    source = open_source("test://?width=64&height=48&fps=50")
    info = source.open()
    assert info.live and info.frame_count is None
    stamps: list[int] = []
    three = threading.Event()

    def consume() -> None:
        for frame in source.frames():
            stamps.append(frame.pts_ns)
            if len(stamps) == 3:
                three.set()

    worker = threading.Thread(target=consume)
    started = time.monotonic()
    worker.start()
    assert three.wait(5)
    source.close()
    worker.join(2)
    assert not worker.is_alive(), "frames() did not return after close()"
    assert time.monotonic() - started < 3
    assert all(b - a >= 15_000_000 for a, b in zip(stamps, stamps[1:], strict=False))  # ~20 ms apart
    source.close()


def test_closed_source_cannot_be_opened() -> None:
    source = open_source("test://?frames=2")
    source.close()
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.open()


@pytest.mark.fault(
    "Decoder error in the middle of a stream (GStreamer bus error)",
    "Frames decoded before the error are delivered first, then the source fails with a one-line reason",
)
def test_bus_error_after_frames_is_raised_after_them() -> None:
    from gi.repository import GLib, Gst

    source = open_source("test://?width=32&height=32&frames=100000")
    source.open()
    frames = source.frames()
    first = [next(frames) for _ in range(5)]
    pipeline = source._pipeline  # white box: post an error as a failing element would
    error = GLib.Error.new_literal(Gst.stream_error_quark(), "injected failure", int(Gst.StreamError.FAILED))
    pipeline.post_message(Gst.Message.new_error(pipeline.get_by_name("src"), error, "test"))
    count = len(first)
    with pytest.raises(SourceError, match="injected failure"):
        for _frame in frames:
            count += 1
    source.close()
    assert 5 <= count < 100  # within one bus-poll interval plus the appsink queue


@pytest.fixture
def rtsp_launch() -> str:
    pytest.importorskip("gi")
    import gi

    try:
        gi.require_version("GstRtspServer", "1.0")
    except ValueError:
        pytest.skip("gst-rtsp-server (GstRtspServer typelib) is not installed")
    encoder = h264_encoder()
    if encoder is None:
        pytest.skip("no GStreamer H.264 encoder (x264enc, openh264enc, avenc_h264)")
    return (
        "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 "
        f"! {encoder} ! rtph264pay name=pay0 pt=96 )"
    )


def test_rtsp_stream(rtsp_launch: str) -> None:
    started = time.monotonic()
    with rtsp_server(rtsp_launch) as port:
        source = open_source(f"rtsp://viewer:secret@127.0.0.1:{port}/test", connect_timeout_s=10)
        try:
            info = source.open()
            frames = []
            for frame in source.frames():
                frames.append(frame)
                if len(frames) == 20:
                    break
        finally:
            source.close()
    assert time.monotonic() - started < 20
    assert info.uri == f"rtsp://viewer:***@127.0.0.1:{port}/test"
    assert (info.width, info.height, info.live, info.frame_count) == (320, 240, True, None)
    assert [f.index for f in frames] == list(range(20))
    assert all(b.pts_ns > a.pts_ns for a, b in zip(frames, frames[1:], strict=False))
    assert frames[-1].image.shape == (240, 320, 3)
    assert frames[-1].image.std() > 10  # a real picture (colour bars), not a blank buffer


def test_rtsp_server_going_away_is_an_error(rtsp_launch: str) -> None:
    with contextlib.ExitStack() as server:
        port = server.enter_context(rtsp_server(rtsp_launch))
        source = open_source(f"rtsp://127.0.0.1:{port}/test", stall_timeout_s=5)
        received = 0
        try:
            source.open()
            with pytest.raises(SourceError, match="127.0.0.1.*stream ended|127.0.0.1.*no frame"):
                for _frame in source.frames():
                    received += 1
                    if received == 5:
                        server.close()  # the camera disappears mid-stream
        finally:
            source.close()
    assert received >= 5


def test_rtsp_connection_refused_fails_fast() -> None:
    port = free_port()
    source = open_source(f"rtsp://admin:hunter2@127.0.0.1:{port}/none", connect_timeout_s=5)
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        source.open()
    source.close()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "hunter2" not in message and f"admin:***@127.0.0.1:{port}" in message
    assert "\n" not in message


@pytest.mark.fault(
    "RTSP server accepts TCP and never answers",
    "Connection attempt times out after `connect_timeout_s` (one line, then retried when supervised)",
)
def test_rtsp_silent_server_times_out() -> None:
    # Accepts the TCP connection and never answers: only the timeout can end open().
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        source = open_source(f"rtsp://127.0.0.1:{port}/mute", connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(SourceError):
            source.open()
        source.close()
    assert time.monotonic() - started < 4


def test_v4l2_camera() -> None:
    devices = sorted(glob.glob("/dev/video*"))
    if not devices:
        pytest.skip("no V4L2 device (/dev/video*) on this machine")
    source = open_source(devices[0], connect_timeout_s=5)
    try:
        info = source.open()
        frame = next(iter(source.frames()))
    finally:
        source.close()
    assert info.live and frame.image.shape == (info.height, info.width, 3)
