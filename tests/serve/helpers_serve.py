"""A real `vistream serve` in a child process on 127.0.0.1, and light pipelines for it.

The service runs exactly as a user starts it (``python -m engine.cli serve``), on a free port,
with its own data directory; tests talk to it over HTTP with httpx.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx is a test dependency of the service tests only (dev extra)
    import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]

#: A pipeline without a model: the calibration grid and the annotator (draws nothing without
#: detections). Starts in a second and takes a calibration, so the editor can be tested.
LIGHT_PIPELINE = f"""
device: cpu
stages:
  - stage: grid
    calibration: {REPO_ROOT / "calibrations" / "highway_overpass.yaml"}
  - stage: annotate
"""

#: The lightest pipeline: no stage takes a calibration.
PLAIN_PIPELINE = """
device: cpu
stages:
  - stage: annotate
"""


def write_replayed_pipeline(
    data_dir: Path, *, frames: int = 3000, new_track_every: int = 10, track_frames: int = 30
) -> None:
    """Put pipeline ``replayed`` in the service's data directory: the ``replay`` stage gives
    tracked objects from a MOT file (one new track every ``new_track_every`` frames, each
    seen for ``track_frames``), so a cheap ``test://`` stream has object events to publish."""
    lines = []
    for track in range(1, frames // new_track_every + 1):
        first = (track - 1) * new_track_every
        for frame in range(first, min(first + track_frames, frames)):
            x = 4 + 3 * (frame - first)
            lines.append(f"{frame + 1},{track},{x},20,16,12,0.9")
    folder = data_dir / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    mot = folder / "replayed.mot.txt"
    mot.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "replayed.yaml").write_text(
        f"device: cpu\nstages:\n  - stage: replay\n    path: {mot}\n    track_ids: true\n", encoding="utf-8"
    )


def read_objects_files(stream_dir: Path) -> list[dict[str, Any]]:
    """Every object event of every run of a stream (``DATA/streams/<name>/*/objects.jsonl``);
    a torn last line of a killed run is skipped."""
    import json

    events = []
    for path in sorted(stream_dir.glob("*/objects.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_pipelines(data_dir: Path) -> None:
    """Put the test pipelines (``light``, ``plain``) in the service's data directory."""
    folder = data_dir / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "light.yaml").write_text(LIGHT_PIPELINE, encoding="utf-8")
    (folder / "plain.yaml").write_text(PLAIN_PIPELINE, encoding="utf-8")


class Service:
    """`vistream serve` in a child process; a context manager that stops it (SIGTERM).

    Args:
        data_dir: The service's data directory.
        extra: More command-line arguments (``--token``...).
        port: The port (default: a free one).
    """

    def __init__(self, data_dir: Path, *extra: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None

    def start(self, timeout_s: float = 60.0) -> Service:
        """Start the service and wait for ``/api/health``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("VISTREAM_SHARED", str(REPO_ROOT.parent / "shared"))
        command = [sys.executable, "-m", "engine.cli", "serve", "--data", str(self.data_dir)]
        command += ["--port", str(self.port), *self.extra]
        import httpx

        started_s = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        while True:
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"vistream serve exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() - started_s > timeout_s:
                raise RuntimeError(f"vistream serve not up within {timeout_s} s: {self.log()}")
            time.sleep(0.1)
        self.started_in_s = time.monotonic() - started_s
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def log(self) -> str:
        """Everything the service (and its workers) logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client for the service."""
        import httpx

        return httpx.Client(base_url=self.base_url, timeout=15, **kwargs)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy (returned), or fail after ``timeout_s``."""
    deadline_s = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline_s:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not met within {timeout_s} s (last: {last!r})")


def stream_state(client: httpx.Client, name: str, state: str = "running") -> dict[str, Any] | None:
    """The stream's view when it is in ``state`` with frames flowing (for running), else None."""
    response = client.get(f"/api/streams/{name}")
    if response.status_code != 200:
        return None
    view: dict[str, Any] = response.json()
    if view["state"] != state or (state == "running" and not view["fps"] > 0):
        return None
    return view
