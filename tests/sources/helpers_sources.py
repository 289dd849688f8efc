"""Factories for the source tests: synthetic videos with known pixels, an RTSP test server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np


def known_planes(index: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """I420 planes of frame ``index``: every pixel distinct enough to catch a shifted row."""
    rng = np.random.default_rng(index)
    chroma = ((height + 1) // 2, (width + 1) // 2)
    y = rng.integers(16, 236, (height, width), dtype=np.uint8)
    u = rng.integers(16, 241, chroma, dtype=np.uint8)
    v = rng.integers(16, 241, chroma, dtype=np.uint8)
    return y, u, v


def write_lossless_video(
    path: Path, *, width: int, height: int, frames: int, fps: int = 25
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write an FFV1 (lossless) Matroska file of ``known_planes`` frames; return the planes."""
    import av

    planes = [known_planes(i, width, height) for i in range(frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index, (y, u, v) in enumerate(planes):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, data in zip(frame.planes, (y, u, v), strict=True):
                rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                rows[:, : plane.width] = data
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return planes


def write_h264_with_audio(path: Path, *, frames: int = 30, fps: int = 30) -> None:
    """Write a small MP4 with an H.264 video track and an AAC audio track."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        samples_per_frame = 1024
        audio_pts = 0
        for index in range(frames):
            image = np.full((48, 64, 3), (index * 8) % 256, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
            while audio_pts < (index + 1) * 48000 // fps:
                chunk = av.AudioFrame.from_ndarray(
                    np.zeros((1, samples_per_frame), np.float32), format="fltp", layout="mono"
                )
                chunk.sample_rate, chunk.pts = 48000, audio_pts
                container.mux(audio.encode(chunk))
                audio_pts += samples_per_frame
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def h264_encoder() -> str | None:
    """The first installed GStreamer H.264 encoder usable for a live RTSP test stream."""
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)

    options = {
        "x264enc": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15",
        "openh264enc": "openh264enc",
        "avenc_h264": "avenc_h264",
    }
    for factory, description in options.items():
        if Gst.ElementFactory.find(factory) is not None:
            return description
    return None


@contextlib.contextmanager
def rtsp_server(launch: str, *, mount: str = "/test") -> Iterator[int]:
    """Serve ``launch`` (a gst-rtsp-server launch line) on 127.0.0.1; yield the port.

    The server runs its own GLib main loop in a daemon thread and stops on exit.
    """
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)

    context = GLib.MainContext.new()
    loop = GLib.MainLoop.new(context, False)
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service("0")  # any free port
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory(mount, factory)
    source_id = server.attach(context)
    port = server.get_bound_port()
    thread = threading.Thread(target=loop.run, name="rtsp-test-server", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        # Drop the clients first (their media pipelines stop with them), then the loop.
        def _shutdown() -> bool:
            server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
            loop.quit()
            return False

        context.invoke_full(GLib.PRIORITY_DEFAULT, _shutdown)
        thread.join(timeout=5)
        source = context.find_source_by_id(source_id)
        if source is not None:
            source.destroy()
