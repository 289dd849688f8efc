"""One stream's :class:`~engine.serve.worker.StreamWorker` inside a Ray actor.

The actor is a thin shell: the worker is the same class the service runs in a child process,
so a stream behaves the same on one machine and on a cluster. The service talks to it with
one call, :meth:`StreamActor.poll`, every half second (a few times a second while someone
watches the live view): it returns the status, the events after the service's cursor, and
the latest annotated JPEG when asked. JPEGs of a few tens of kB travel inside the reply
(Ray inlines return values under 100 kB instead of putting them in the object store), so
a watched stream costs one round trip per live frame (measured in
``benchmarks/cluster_streams.py``) and an unwatched one encodes nothing.

Restarts are Ray's: the actor is created with ``max_restarts=-1``, so when its process or
its node dies Ray runs ``__init__`` again on a node that has the resources. A restarted
actor knows it (``was_current_actor_reconstructed``) and puts a ``source_reconnected``
event first in its stream: the frames between the loss and that event were not seen, and
trackers started over.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.serve.streams import StreamConfig
from engine.serve.worker import StreamWorker

logger = logging.getLogger(__name__)


class StreamActor:
    """Holds one stream's worker (see the module docstring); made a Ray actor by the scheduler.

    Args:
        config: The stream's stored configuration (:meth:`StreamConfig.to_dict`).
        data_dir: The service's data directory as the nodes see it (shared storage).
        jpeg_quality: JPEG quality of snapshots and live frames.
        log_level: Logging level inside the actor.
    """

    def __init__(
        self, config: dict[str, Any], data_dir: str, *, jpeg_quality: int = 80, log_level: int = logging.INFO
    ) -> None:
        import ray

        logging.basicConfig(level=log_level)
        context = ray.get_runtime_context()
        self.node_id: str = context.get_node_id()
        self.node_ip: str = ray.util.get_node_ip_address()
        self.pid = os.getpid()
        self.started_at_s = time.time()
        self.restarted = bool(context.was_current_actor_reconstructed)
        self.incarnation = f"{self.node_id}:{self.pid}:{self.started_at_s}"
        self.worker = StreamWorker(
            StreamConfig.from_dict(config), data_dir=Path(data_dir), jpeg_quality=jpeg_quality
        )
        if self.restarted:
            # First in the stream: what follows comes from a fresh pipeline (new track ids).
            self.worker.tap.add_event(
                {
                    "type": "source_reconnected",
                    "reason": "the worker was restarted by the cluster (its node or process was lost)",
                    "node": self.node_id,
                }
            )
            logger.warning("stream %s restarted on node %s", config.get("name"), self.node_id)
        self.worker.start()

    def where(self) -> dict[str, Any]:
        """This incarnation: node id and address, process id, start time, restarted or not."""
        return {
            "node": self.node_id,
            "node_ip": self.node_ip,
            "pid": self.pid,
            "started_at_s": self.started_at_s,
            "restarted": self.restarted,
            "incarnation": self.incarnation,
        }

    def poll(
        self, event_seq: int, *, incarnation: str | None = None, frame_after_seq: int | None = None
    ) -> dict[str, Any]:
        """Status, events after ``event_seq`` and, when ``frame_after_seq`` is given, a newer
        annotated frame. Cursors the caller kept for another ``incarnation`` (before a restart)
        mean nothing here: they start over, so no event of this incarnation is skipped.

        Returns:
            ``{"where": ..., "status": ..., "event_seq": int, "events": [...],
            "frame": (seq, jpeg) | None}``.
        """
        if incarnation != self.incarnation:
            event_seq = 0
            frame_after_seq = None if frame_after_seq is None else -1
        next_seq, events = self.worker.events_since(event_seq)
        frame = None
        if frame_after_seq is not None:
            frame = self.worker.latest_jpeg(annotated=True, after_seq=frame_after_seq)
        return {
            "where": self.where(),
            "status": self.worker.status(),
            "event_seq": next_seq,
            "events": events,
            "frame": frame,
        }

    def jpeg(self, annotated: bool = True) -> bytes | None:
        """The latest frame as JPEG (see :meth:`StreamWorker.latest_jpeg`)."""
        result = self.worker.latest_jpeg(annotated=annotated)
        return None if result is None else result[1]

    def stop(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Stop the pipeline (outputs finalized); returns the last status."""
        self.worker.stop(timeout_s)
        return self.worker.status()
