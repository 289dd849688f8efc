"""The service's side of one stream whose worker is a Ray actor somewhere in the cluster.

:class:`RayStreamSupervisor` offers what :class:`~engine.serve.supervisor.StreamSupervisor`
offers the service and the API (``start``, ``stop``, ``status``, ``snapshot``, ``watch``,
``frame``, ``events``, ``restarts``), plus :meth:`~RayStreamSupervisor.move` and the node in
the status. A thread polls the actor (:meth:`StreamActor.poll`) every
:data:`POLL_INTERVAL_S`, or at the live rate while a viewer holds a watch lease.

Who restarts what: a dead actor process or a lost node is Ray's business (the actor has
``max_restarts=-1``: Ray runs it again where the resources are); while it is away the stream
shows ``starting`` with the reason. A pipeline that *fails* inside a live actor (a bad model,
a crash of the decoder thread) is this class's: after a backoff it kills the actor and Ray
starts it afresh. Each new incarnation (another node or process) counts as a restart and is
an event (``worker_restarted``, with the node before and after and the gap in seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import ray
import ray.exceptions

from engine.serve.streams import StreamConfig
from engine.serve.worker import EVENTS_KEPT

logger = logging.getLogger(__name__)

#: Seconds between two polls of an actor nobody watches.
POLL_INTERVAL_S = 0.5
#: A poll unanswered for this long marks the worker unreachable (the call is abandoned).
POLL_TIMEOUT_S = 5.0
_WATCH_LEASE_S = 3.0
_FAILED_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class RayStreamSupervisor:
    """Keeps one stream's actor running and mirrors its status, events and live frames.

    Args:
        config: The stream.
        make_actor: Creates the stream's actor, given a node id to prefer (or None: anywhere).
        live_fps: Most live frames a second fetched while someone watches.
    """

    def __init__(self, config: StreamConfig, *, make_actor: Any, live_fps: float = 10.0) -> None:
        self.config = config
        self.live_fps = live_fps
        self.restarts = 0
        self.moves = 0
        self.worker_status: dict[str, Any] = {}
        self.where: dict[str, Any] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.event_id = 0
        self.frame: tuple[int, bytes] | None = None
        self.frame_received_s = 0.0
        self._make_actor = make_actor
        self._actor: Any = None
        self._actor_lock = threading.Lock()
        self._incarnation: str | None = None
        self._event_seq = 0
        self._frame_seq = -1
        self._last_seen_s: float | None = None
        self._lost: str | None = None
        self._failed_since_s: float | None = None
        self._failures = 0
        self._watch_until_s = 0.0
        self._stopping = threading.Event()
        self._poll_lock = threading.Lock()  # a move waits for the poll in flight
        self._thread = threading.Thread(
            target=self._poll_loop, name=f"vistream-ray-{config.name}", daemon=True
        )

    @property
    def node(self) -> str | None:
        """The node id the stream's worker runs on (None before it first answered)."""
        node: str | None = self.where.get("node")
        return node

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, node: str | None = None) -> None:
        """Create the actor (on ``node`` if given and alive) and start polling it."""
        self._actor = self._make_actor(node)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the pipeline (outputs finalized), then end the actor for good."""
        self._stopping.set()
        if self._thread.ident is not None:  # started (creating the actor may have failed first)
            self._thread.join(POLL_TIMEOUT_S + 1.0)
        with self._actor_lock:
            actor, self._actor = self._actor, None
        if actor is not None:
            self._end_actor(actor, timeout_s)

    def move(self, node: str) -> None:
        """Stop the worker where it runs and start it on ``node`` (a planned move: outputs are
        finalized first, and the new pipeline starts clean)."""
        previous = self.node
        with self._poll_lock:
            with self._actor_lock:
                old, self._actor = self._actor, None
            if old is not None:
                self._end_actor(old, 10.0)
            # The new actor is a new incarnation by plan, not a restart: start its cursors over.
            self._incarnation, self._event_seq, self._frame_seq = None, 0, -1
            self.worker_status = {}
            with self._actor_lock:
                self._actor = self._make_actor(node)
            self.moves += 1
        self._add_event({"type": "worker_moved", "from_node": previous, "to_node": node})
        logger.info("stream %s: moved from node %s to %s", self.config.name, previous, node)

    def _end_actor(self, actor: Any, timeout_s: float) -> None:
        try:
            ray.get(actor.stop.remote(timeout_s), timeout=timeout_s + 2.0)
        except (ray.exceptions.RayError, TimeoutError) as error:
            logger.warning("stream %s: worker did not stop cleanly: %s", self.config.name, error)
        ray.kill(actor, no_restart=True)

    # -- polling ----------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            watching = time.monotonic() < self._watch_until_s
            with self._poll_lock:
                self._poll_once(watching)
            interval_s = 1.0 / self.live_fps if watching else POLL_INTERVAL_S
            self._stopping.wait(interval_s)

    def _poll_once(self, watching: bool) -> None:
        with self._actor_lock:
            actor = self._actor
        if actor is None:
            return
        try:
            reply = ray.get(
                actor.poll.remote(
                    self._event_seq,
                    incarnation=self._incarnation,
                    frame_after_seq=self._frame_seq if watching else None,
                ),
                timeout=POLL_TIMEOUT_S,
            )
        except ray.exceptions.GetTimeoutError:
            self._mark_lost(f"worker on node {_short(self.node)} does not answer")
            return
        except ray.exceptions.RayActorError:
            self._mark_lost(f"worker on node {_short(self.node)} was lost; the cluster restarts it")
            return
        except ray.exceptions.RayError as error:
            self._mark_lost(f"worker unreachable: {type(error).__name__}")
            return
        self._take(reply)

    def _take(self, reply: dict[str, Any]) -> None:
        where = reply["where"]
        incarnation = where["incarnation"]
        if self._incarnation is not None and incarnation != self._incarnation:
            gap_s = None if self._last_seen_s is None else round(time.monotonic() - self._last_seen_s, 1)
            self.restarts += 1
            self._add_event(
                {
                    "type": "worker_restarted",
                    "from_node": self.where.get("node"),
                    "to_node": where["node"],
                    "gap_s": gap_s,
                }
            )
            logger.warning(
                "stream %s: worker restarted on node %s (gap %s s)",
                self.config.name,
                _short(where["node"]),
                gap_s,
            )
        self._incarnation = incarnation
        self.where = where
        self._lost = None
        self._last_seen_s = time.monotonic()
        self._event_seq = reply["event_seq"]
        for event in reply["events"]:
            self._add_event(event)
        self.worker_status = reply["status"]
        frame = reply["frame"]
        if frame is not None:
            self._frame_seq = frame[0]
            self.frame = (frame[0], frame[1])
            self.frame_received_s = time.monotonic()
        self._restart_if_failed()

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            logger.warning("stream %s: %s", self.config.name, reason)
        self._lost = reason

    def _restart_if_failed(self) -> None:
        """A pipeline that failed in a live actor: kill the actor after a backoff, Ray restarts it."""
        if self.worker_status.get("state") != "failed":
            self._failed_since_s = None
            if self.worker_status.get("state") == "running":
                self._failures = 0
            return
        now_s = time.monotonic()
        if self._failed_since_s is None:
            self._failed_since_s = now_s
            return
        delay_s = _FAILED_BACKOFF_S[min(self._failures, len(_FAILED_BACKOFF_S) - 1)]
        if now_s - self._failed_since_s >= delay_s:
            self._failures += 1
            self._failed_since_s = None
            with self._actor_lock:
                actor = self._actor
            if actor is not None:
                logger.warning("stream %s: pipeline failed; restarting its worker", self.config.name)
                ray.kill(actor, no_restart=False)

    def _add_event(self, event: dict[str, Any]) -> None:
        """Keep an event with an ``id`` that keeps growing across restarts and moves (SSE ids)."""
        self.event_id += 1
        stamped = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "stream": self.config.name}
        self.events.append({**stamped, **event, "id": self.event_id})

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The worker's last status with the cluster's facts: node, node_ip, restarts, moves."""
        status: dict[str, Any] = {
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
        if self._lost is not None:
            status.update(state="starting", fps=0.0, last_error=self._lost)
        status["worker_restarts"] = self.restarts
        status["moves"] = self.moves
        status["pid"] = self.where.get("pid")
        status["node"] = self.where.get("node")
        status["node_ip"] = self.where.get("node_ip")
        started = self.where.get("started_at_s")
        status["uptime_s"] = round(time.time() - started, 1) if started and self._lost is None else None
        return status

    def snapshot(self, *, annotated: bool = True, timeout_s: float = 3.0) -> bytes | None:
        """The worker's latest frame as JPEG (None: no frame yet or no worker)."""
        with self._actor_lock:
            actor = self._actor
        if actor is None:
            return None
        try:
            data: bytes | None = ray.get(actor.jpeg.remote(annotated), timeout=timeout_s)
        except ray.exceptions.RayError:
            return None
        return data

    def watch(self) -> None:
        """Fetch live frames for a few more seconds (a viewer calls this)."""
        self._watch_until_s = time.monotonic() + _WATCH_LEASE_S


def _short(node: str | None) -> str:
    return "?" if node is None else node[:8]
