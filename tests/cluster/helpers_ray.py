"""A real local Ray cluster for tests: a head and worker nodes as separate ``ray start``
processes inside a network namespace that has only ``lo``.

Why a namespace: Ray advertises the machine's external address even when told 127.0.0.1 and
listens on every interface; inside a namespace with only loopback it uses 127.0.0.1 and no
packet leaves the machine. Creating one needs root (``ip netns``): without it the cluster
tests skip with that reason. Every process is stopped by its PID (never ``ray stop``, which
kills every Ray process of the machine) and the namespace is deleted afterwards.

The test process itself stays outside; :class:`Netns` runs calls on a thread that entered
the namespace (``setns`` is per thread), so tests reach the service's HTTP port there.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")

#: The head's GCS port (outside Ray's default worker-port range 10002-19999).
HEAD_PORT = 6390
#: Seconds a node may take to join: ``ray start`` alone takes 6-15 s on an idle 2-core box,
#: far more when it is loaded.
NODE_START_TIMEOUT_S = 240.0


def netns_unavailable() -> str | None:
    """Why a network namespace cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root for a network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    return None


def ray_env() -> dict[str, str]:
    """The environment of every process in the test cluster."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",  # token auth writes ~/.ray/auth_token; loopback-only here
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


class Netns:
    """A network namespace with only ``lo`` up (a context manager that deletes it).

    Args:
        prefix: Start of the namespace's name (a random suffix is added).
    """

    def __init__(self, prefix: str = "vsray") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        # Anything still inside (a process that outlived its parent) would keep it busy.
        for pid in self.pids():
            _kill(pid)
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def exec_args(self, *command: str) -> list[str]:
        """``command`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def pids(self) -> list[int]:
        """The processes inside the namespace."""
        result = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(line) for line in result.stdout.split()]

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function`` on a thread inside the namespace (its sockets are made there)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, initializer=self._enter)
        return self._executor.submit(function, *args, **kwargs).result()

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/var/run/netns/{self.name}") as handle:
            if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")


class RayNode:
    """One ``ray start --block`` process (a head or a worker node) inside the namespace.

    Args:
        netns: The namespace.
        temp_dir: Ray's session directory root (short: Ray's socket paths must fit 107 bytes).
        log_path: Where the node's output goes.
        head: Start a head (GCS) rather than a node that joins one.
        cpus: Logical CPUs the node offers.
        worker_ports: First and last port of this node's worker processes.
    """

    def __init__(
        self,
        netns: Netns,
        *,
        temp_dir: Path,
        log_path: Path,
        head: bool,
        cpus: int,
        worker_ports: tuple[int, int],
    ) -> None:
        self.netns = netns
        self.head = head
        self.log_path = log_path
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
        command += ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0"]
        command += [f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}"]
        if head:
            command += [
                "--head",
                f"--port={HEAD_PORT}",
                "--include-dashboard=false",
                "--ray-client-server-port=6391",
                f"--temp-dir={temp_dir}",
            ]
        else:
            command += [f"--address=127.0.0.1:{HEAD_PORT}"]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                netns.exec_args(*command), env=ray_env(), stdout=log, stderr=subprocess.STDOUT
            )
        self.pid = self.process.pid

    def raylet_pid(self, timeout_s: float = NODE_START_TIMEOUT_S) -> int:
        """The PID of this node's raylet (a child of the ``ray start`` process)."""
        deadline_s = time.monotonic() + timeout_s
        while time.monotonic() < deadline_s:
            for child in psutil.Process(self.pid).children():
                if child.name() == "raylet":
                    return int(child.pid)
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}: {self.log()}")
            time.sleep(0.5)
        raise RuntimeError(f"no raylet within {timeout_s} s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM the ``ray start`` process (it ends its node's processes), then SIGKILL all."""
        try:
            family = [self.pid, *(child.pid for child in psutil.Process(self.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            family = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for pid in family:
            _kill(pid)
        if self.process.poll() is None:
            self.process.wait(5)

    def log(self) -> str:
        """The node's output so far (the last 3000 characters)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]


def wait_for_port(netns: Netns, port: int, timeout_s: float = NODE_START_TIMEOUT_S) -> float:
    """Wait until something listens on 127.0.0.1:``port`` inside the namespace; returns seconds."""
    started_s = time.monotonic()

    def reachable() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    while not netns.call(reachable):
        if time.monotonic() - started_s > timeout_s:
            raise RuntimeError(f"nothing listens on port {port} within {timeout_s} s")
        time.sleep(0.5)
    return time.monotonic() - started_s


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class NetnsService:
    """``vistream serve --cluster`` in a child process inside the namespace, and HTTP calls to it.

    Args:
        netns: The namespace.
        data_dir: The service's data directory.
        extra: More command-line arguments.
        port: The service's port inside the namespace.
    """

    def __init__(self, netns: Netns, data_dir: Path, *extra: str, port: int = 8080) -> None:
        self.netns = netns
        self.data_dir = data_dir
        self.port = port
        self.log_path = data_dir.parent / "serve.log"
        command = [sys.executable, "-m", "engine.cli", "serve", "--data", str(data_dir), "--port", str(port)]
        command += [*extra]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                netns.exec_args(*command),
                cwd=REPO_ROOT,
                env=ray_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to the service (made inside the namespace)."""

        def call() -> httpx.Response:
            with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as client:
                return client.request(method, path, **kwargs)

        return self.netns.call(call)

    def wait_healthy(self, timeout_s: float = NODE_START_TIMEOUT_S) -> float:
        """Wait for ``/api/health``; returns the seconds it took."""
        started_s = time.monotonic()
        while True:
            try:
                if self.request("GET", "/api/health").status_code == 200:
                    return time.monotonic() - started_s
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"vistream serve exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() - started_s > timeout_s:
                raise RuntimeError(f"vistream serve not up within {timeout_s} s: {self.log()}")
            time.sleep(0.5)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the service stops its actors and leaves the cluster), SIGKILL if it hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log(self) -> str:
        """The service's output so far (the last 4000 characters)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]


#: nats-server's port inside the namespace (outside the nodes' worker ports and Ray's
#: ephemeral ones).
NATS_PORT = 14222


class NetnsNats:
    """A real nats-server with JetStream inside the namespace, killable and restartable on the
    same port and store.

    Args:
        netns: The namespace.
        binary: The nats-server executable.
        workdir: Its store (``js/``) and log.
    """

    def __init__(self, netns: Netns, binary: Path, workdir: Path) -> None:
        self.netns = netns
        self.log_path = workdir / "nats.log"
        self.command = [
            str(binary),
            "-a",
            "127.0.0.1",
            "-p",
            str(NATS_PORT),
            "-js",
            "-sd",
            str(workdir / "js"),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"nats://127.0.0.1:{NATS_PORT}"

    def start(self) -> None:
        """Start it and wait until it listens."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.netns.exec_args(*self.command), stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.netns, NATS_PORT, timeout_s=30)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final save."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def events(self) -> list[dict[str, Any]]:
        """Every event the JetStream stream holds, in stream order (read inside the namespace)."""
        import asyncio

        from engine.publish.stream import read_stream

        return [event for _, event in self.netns.call(lambda: asyncio.run(read_stream(self.url)))]
