"""``objects.jsonl``: object lifecycle events (new / update / end / alert), one JSON per line.

Every event is one object::

    {"id": "6f1c2a9e0b3d-000042", "type": "new" | "update" | "end" | "alert",
     "source": "highway", "seq": 42, "pts_ns": 1234000000,
     "time": "2026-12-02T16:20:01.123Z", "object": {"track_id": 7, "class_name": "car", ...},
     "change": {...}            # update only
     "alert": {...}}            # alert only

``id`` is unique (a random token per run, then a counter), ``seq`` counts the events of one
source from 1 (in the order they happened), ``time`` is the wall clock when the event was
made. What the fields mean: :mod:`engine.sinks.lifecycle`.

Events first go to the listeners (the durable spool of ``--publish``), then to the file, so
a crash between the two leaves the spool ahead of the file, never behind. The line written
and the payload published are the same bytes.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from engine.errors import SinkError
from engine.frame import OBJECTS_LAYER, Batch
from engine.sinks.lifecycle import SOURCE_LOST, ObjectLifecycle
from engine.sinks.serialize import to_json_line
from engine.stage import Context

logger = logging.getLogger(__name__)


class EventListener(Protocol):
    """Takes lifecycle events as they are made (``engine.publish.EventDelivery``)."""

    def put(self, events: Sequence[dict[str, Any]]) -> None:
        """Take numbered events; must not wait for a network."""


class ObjectEventsSink:
    """Writes lifecycle events of one tracked layer to a JSONL file and to listeners.

    Args:
        path: The ``objects.jsonl`` file (overwritten).
        layer: The tracked layer whose tracks are the objects.
        listeners: Also given every event, before it is written.
        snapshot_dir: Best crop per object as JPEG; None for none.
        end_after_s: See :class:`~engine.sinks.lifecycle.ObjectLifecycle`.
        update_interval_s: See :class:`~engine.sinks.lifecycle.ObjectLifecycle`.
    """

    def __init__(
        self,
        path: Path,
        *,
        layer: str = OBJECTS_LAYER,
        listeners: Sequence[EventListener] = (),
        snapshot_dir: Path | None = None,
        end_after_s: float = 2.0,
        update_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.listeners = list(listeners)
        self.lifecycle = ObjectLifecycle(
            layer=layer,
            end_after_s=end_after_s,
            update_interval_s=update_interval_s,
            snapshot_dir=snapshot_dir,
        )
        self._file: TextIO | None = None
        self._run_token = uuid.uuid4().hex[:12]
        self._count = 0
        self._seq: Counter[str] = Counter()

    @property
    def counts(self) -> dict[str, int]:
        """Events written so far, per type."""
        return dict(self.lifecycle.counts)

    def open(self, context: Context) -> None:
        """Create the file; raise SinkError when it cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8", newline="\n")
        except OSError as error:
            raise SinkError(f"cannot create object events output {self.path}: {error}") from error

    def write(self, batch: Batch) -> None:
        """Derive the batch's lifecycle events and emit them."""
        events = [event for frame in batch for event in self.lifecycle.frame_events(frame)]
        self._emit(events)

    def end_of_stream(self, source_id: str) -> None:
        """End the source's objects."""
        self._emit(self.lifecycle.end_source(source_id, reason="end_of_stream"))

    def segment_ended(self, source_id: str, reason: str) -> None:
        """A reconnecting source lost its connection: its objects end now, at their last
        sighting (``end_reason`` ``source_lost``), not when the source comes back (its tracker
        starts afresh then, with new ids)."""
        self._emit(self.lifecycle.end_source(source_id, reason=SOURCE_LOST))

    def close(self) -> None:
        """End the objects still open (a stop), close the file; safe to call twice."""
        if self._file is None:
            return
        try:
            self._emit(self.lifecycle.end_all("stopped"))
        finally:
            try:
                self._file.close()
            except OSError as error:
                raise SinkError(f"cannot close object events output {self.path}: {error}") from error
            finally:
                self._file = None

    def _emit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        if self._file is None:
            raise SinkError(f"object events output {self.path} is not open (call open() before write())")
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for event in events:
            self._count += 1
            self._seq[event["source"]] += 1
            event["id"] = f"{self._run_token}-{self._count:06d}"
            event["seq"] = self._seq[event["source"]]
            event["time"] = now
        for listener in self.listeners:
            listener.put(events)
        try:
            self._file.write("".join(to_json_line(event) + "\n" for event in events))
            self._file.flush()
        except OSError as error:
            raise SinkError(f"cannot write object events output {self.path}: {error}") from error
