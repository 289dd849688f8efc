"""Starts, watches and restarts one stream's worker process.

One :class:`StreamSupervisor` per stream owns a thread that spawns the worker
(:func:`engine.serve.process.worker_main`), reads everything it sends, and when the process
ends without being asked to (a crash, a kill, a failed pipeline) starts a new one after a
backoff (0.5 s, doubled after each quick failure up to 30 s; a worker that ran a minute is
forgiven). Each new process counts as a restart and has a new pid. A stream whose file source
simply ended is not restarted (its state stays ``stopped``).

Live frames: viewers call :meth:`StreamSupervisor.watch`, which keeps a lease open in the
worker (renewed every second); the worker then sends frames at the capped rate, and the
latest one waits here for the viewers. Without viewers the lease lapses and nothing is encoded.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.serve.process import EXIT_FAILED, worker_main
from engine.serve.streams import StreamConfig
from engine.serve.worker import EVENTS_KEPT

logger = logging.getLogger(__name__)

#: First wait before a restart; doubled after each quick failure, up to the maximum.
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
# A worker that ran this long before ending had no quick failure: the backoff starts over.
_HEALTHY_RUN_S = 60.0
_WATCH_LEASE_S = 3.0
_STOP_TIMEOUT_S = 15.0


class StreamSupervisor:
    """Keeps one stream's worker process alive (see the module docstring).

    Args:
        config: The stream.
        data_dir: The service's data directory.
        live_fps: Most frames a second sent to viewers.
        jpeg_quality: JPEG quality of snapshots and live frames.
        log_level: Logging level of the worker process.
    """

    def __init__(
        self,
        config: StreamConfig,
        *,
        data_dir: Path,
        live_fps: float = 10.0,
        jpeg_quality: int = 80,
        log_level: int = logging.INFO,
    ) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.live_fps = live_fps
        self.jpeg_quality = jpeg_quality
        self.log_level = log_level
        self.restarts = 0
        self.pid: int | None = None
        self.started_s: float | None = None
        self.worker_status: dict[str, Any] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.event_id = 0
        self.frame: tuple[int, bytes] | None = None  # the latest live frame, (seq, JPEG)
        self.frame_received_s = 0.0
        self._state_override: str | None = "starting"
        self._last_exit: str | None = None
        self._conn: Connection | None = None
        self._process: Any = None
        self._send_lock = threading.Lock()
        self._requests: dict[int, Future[Any]] = {}
        self._request_ids = itertools.count(1)
        self._watch_until_s = 0.0
        self._stopping = threading.Event()
        self._frame_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._supervise, name=f"vistream-supervise-{config.name}", daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (returns at once)."""
        self._thread.start()

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Stop the worker: ask it (its outputs are finalized), then SIGTERM, then SIGKILL.

        Only the supervising thread waits for the process (two threads reaping one child race),
        so this waits for that thread.
        """
        self._stopping.set()
        self._send(("stop",))
        if not self._thread.is_alive():
            return
        self._thread.join(max(0.1, timeout_s - 3.0))
        for escalate in ("terminate", "kill"):
            process = self._process
            if not self._thread.is_alive() or process is None:
                return
            logger.warning("worker of %s (pid %s) did not stop: %s", self.config.name, process.pid, escalate)
            getattr(process, escalate)()
            self._thread.join(1.5)

    def _supervise(self) -> None:
        failures = 0
        context = multiprocessing.get_context("spawn")
        while not self._stopping.is_set():
            parent, child = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main,
                args=(self.config.to_dict(), str(self.data_dir), child),
                kwargs={"log_level": self.log_level, "jpeg_quality": self.jpeg_quality},
                name=f"vistream-worker-{self.config.name}",
            )
            self._state_override = "starting"
            self.worker_status = {}
            process.start()
            child.close()  # only the child holds its end now: its death closes the pipe
            self._process, self._conn, self.pid = process, parent, process.pid
            self.started_s = time.monotonic()
            logger.info("stream %s: worker started (pid %d)", self.config.name, process.pid)
            self._state_override = None
            self._read(parent)
            process.join(5.0)
            if process.is_alive():  # the pipe broke but the process lives on: do not leave it
                process.kill()
                process.join(2.0)
            self._fail_requests()
            ran_s = time.monotonic() - self.started_s
            code = process.exitcode
            parent.close()
            self._conn = None
            if self._stopping.is_set():
                break
            if code == 0 and self.worker_status.get("state") == "stopped":
                logger.info("stream %s: its source ended; the worker is done", self.config.name)
                self._state_override = "stopped"
                break
            self._last_exit = _describe_exit(process.pid, code)
            failures = 0 if ran_s >= _HEALTHY_RUN_S else failures + 1
            delay_s = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** max(0, failures - 1))
            logger.warning("stream %s: %s; restarting in %.1f s", self.config.name, self._last_exit, delay_s)
            self._state_override = "failed" if code == EXIT_FAILED else "starting"
            self._add_event({"type": "worker_exited", "pid": process.pid, "reason": self._last_exit})
            if self._stopping.wait(delay_s):
                break
            self.restarts += 1
        self._state_override = "stopped"
        self.pid = None

    def _read(self, conn: Connection) -> None:
        """Take everything the worker sends until its end of the pipe closes."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "status":
                before = self.worker_status.get("state")
                self.worker_status = message[1]
                state = self.worker_status.get("state")
                if state != before and before is not None:  # one line per change, not per status
                    error = self.worker_status.get("last_error")
                    logger.info(
                        "stream %s: %s -> %s%s",
                        self.config.name,
                        before,
                        state,
                        f" ({error})" if error else "",
                    )
            elif kind == "events":
                for event in message[1]:
                    self._add_event(event)
            elif kind == "frame":
                with self._frame_lock:
                    self.frame = (message[1], message[2])
                    self.frame_received_s = time.monotonic()
            elif kind == "reply":
                future = self._requests.pop(message[1], None)
                if future is not None:
                    future.set_result(message[2])

    def _send(self, message: tuple[Any, ...]) -> bool:
        conn = self._conn
        if conn is None:
            return False
        with self._send_lock:
            try:
                conn.send(message)
            except (OSError, ValueError):
                return False
        return True

    def _fail_requests(self) -> None:
        requests, self._requests = self._requests, {}
        for future in requests.values():
            future.set_result(None)

    def _add_event(self, event: dict[str, Any]) -> None:
        """Keep an event with an ``id`` that keeps growing across worker restarts (SSE ids)."""
        self.event_id += 1
        stamped = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "stream": self.config.name}
        self.events.append({**stamped, **event, "id": self.event_id})

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The worker's last status, with the supervisor's facts: state, pid, restarts."""
        status = {
            "state": "starting",
            "fps": 0.0,
            "frame_age_p50_ms": None,
            "frame_age_p99_ms": None,
            "frames": 0,
            "dropped": 0,
            "reconnects": 0,
            "last_error": None,
        }
        status.update(self.worker_status)
        if self._state_override is not None:
            status["state"] = self._state_override
            if status["state"] != "stopped":
                status["fps"] = 0.0
        if status.get("last_error") is None and self._last_exit is not None and status["state"] != "running":
            status["last_error"] = self._last_exit
        status["worker_restarts"] = self.restarts
        status["pid"] = self.pid
        status["uptime_s"] = (
            round(time.monotonic() - self.started_s, 1) if self.started_s is not None and self.pid else None
        )
        return status

    def snapshot(self, *, annotated: bool = True, timeout_s: float = 3.0) -> bytes | None:
        """The worker's latest frame as JPEG, encoded on request (None: no frame yet or no worker)."""
        future: Future[Any] = Future()
        request_id = next(self._request_ids)
        self._requests[request_id] = future
        if not self._send(("request", request_id, "jpeg", {"annotated": annotated})):
            self._requests.pop(request_id, None)
            return None
        try:
            result: bytes | None = future.result(timeout_s)
        except FutureTimeout:
            self._requests.pop(request_id, None)
            return None
        return result

    def watch(self) -> None:
        """Keep the worker sending live frames for a few more seconds (a viewer calls this)."""
        now_s = time.monotonic()
        if now_s > self._watch_until_s - _WATCH_LEASE_S + 1.0:
            if self._send(("watch", _WATCH_LEASE_S, self.live_fps)):
                self._watch_until_s = now_s + _WATCH_LEASE_S


def _describe_exit(pid: int | None, code: int | None) -> str:
    if code is None:
        return f"worker {pid} did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {pid} was killed by {name}"
    if code == EXIT_FAILED:
        return f"worker {pid} stopped: its pipeline failed"
    return f"worker {pid} exited with code {code}"
