"""Live-stream test helpers: an RTSP camera in a child process that can be killed and restarted.

The camera is a gst-rtsp-server serving a live ``videotestsrc`` in H.264 on 127.0.0.1. It
runs in its own process so a test can kill it with SIGKILL (a camera losing power: the TCP
connection breaks without a goodbye) and start it again on the same port.

Run ``python -m tests.helpers_live PORT [WIDTH HEIGHT FPS]`` to serve one by hand; it prints
``READY <port>`` once it listens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from engine.frame import Batch
from engine.stage import BaseStage

REPO_ROOT = Path(__file__).resolve().parent.parent


def rtsp_server_available() -> str | None:
    """Why an RTSP test camera cannot run here, or None when it can."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as error:
        return f"gst-rtsp-server through PyGObject is not available ({error})"
    Gst.init(None)
    if Gst.ElementFactory.find("x264enc") is None:
        return "x264enc (GStreamer ugly plugins) is not installed"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RtspCamera:
    """A killable RTSP test camera on a fixed port of 127.0.0.1.

    Args:
        port: TCP port to listen on; None picks a free one.
        width: Picture width in pixels.
        height: Picture height in pixels.
        fps: Frame rate.
        path: Mount point of the stream.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        width: int = 160,
        height: int = 120,
        fps: int = 30,
        path: str = "/cam",
    ) -> None:
        self.port = port if port is not None else free_port()
        self.width, self.height, self.fps, self.path = width, height, fps, path
        self._process: subprocess.Popen[str] | None = None

    def url(self, credentials: str = "") -> str:
        """The camera's rtsp:// URL, with ``user:password@`` when given."""
        prefix = f"{credentials}@" if credentials else ""
        return f"rtsp://{prefix}127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """True while the camera process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 20.0) -> float:
        """Start serving; return ``time.monotonic()`` when the server listens.

        Retries for a while when the port is still held by the previous, killed server.
        """
        if self.running:
            raise RuntimeError("camera already running")
        deadline = time.monotonic() + timeout_s
        while True:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.helpers_live",
                    str(self.port),
                    str(self.width),
                    str(self.height),
                    str(self.fps),
                    self.path,
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert self._process.stdout is not None
            line = self._process.stdout.readline()  # "READY <port>" or EOF on failure
            if line.startswith("READY"):
                return time.monotonic()
            self._process.wait(timeout=5)
            self._process.stdout.close()
            self._process = None
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP test camera could not listen on port {self.port}")
            time.sleep(0.1)

    def kill(self) -> None:
        """Kill the camera abruptly (SIGKILL), as a power cut would."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def pause(self) -> None:
        """Freeze the camera (SIGSTOP): connections stay open, nothing is sent or answered."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen camera go on (SIGCONT)."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.kill()


class SleepStage(BaseStage):
    """Takes ``seconds`` per batch, like a detector slower than the camera (usable from a
    pipeline YAML as ``tests.helpers_live:SleepStage``)."""

    def __init__(self, *, seconds: float = 0.1) -> None:
        self.seconds = seconds

    def __call__(self, batch: Batch) -> Batch:
        time.sleep(self.seconds)
        return batch


class FailingStage(BaseStage):
    """Raises ``ValueError`` on every batch holding frame ``every - 1``, ``2 * every - 1``, ...
    (a stage with a bug that some frames trigger)."""

    def __init__(self, *, every: int = 3) -> None:
        self.every = every

    def __call__(self, batch: Batch) -> Batch:
        for frame in batch:
            if frame.index % self.every == self.every - 1:
                raise ValueError(f"cannot handle frame {frame.index}")
        return batch


class RecordingSink:
    """A sink that keeps, per frame, what the live tests check (not the pixels).

    Attributes:
        rows: ``(source_id, index, pts_ns, capture_ns, written_s, events)`` per frame.
        ended: Source ids given to ``end_of_stream``, in order.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, int, float, list[dict]]] = []
        self.ended: list[str] = []
        self.closed = False

    def open(self, context: object) -> None:
        """Nothing to create."""

    def write(self, batch: object) -> None:
        """Record every frame of the batch."""
        now_s = time.monotonic()
        for frame in batch:  # type: ignore[attr-defined]
            self.rows.append(
                (frame.source_id, frame.index, frame.pts_ns, frame.capture_ns, now_s, list(frame.events))
            )

    def end_of_stream(self, source_id: str) -> None:
        """Remember the end."""
        self.ended.append(source_id)

    def close(self) -> None:
        """Remember the close."""
        self.closed = True

    def events(self, kind: str | None = None) -> list[tuple[float, dict]]:
        """``(written_s, event)`` of every event (of one ``type``), in order."""
        return [
            (row[4], event)
            for row in self.rows
            for event in row[5]
            if kind is None or event.get("type") == kind
        ]

    def count(self, source_id: str) -> int:
        """Frames written for one source."""
        return sum(1 for row in self.rows if row[0] == source_id)


def _serve(port: int, width: int, height: int, fps: int, path: str) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory.new()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps // 2} "
        "! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(3)  # the port is taken
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
