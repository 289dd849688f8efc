"""The per-vehicle table: one CSV row per vehicle final speed (``vehicles.csv``).

Convention:
    - Rows come from ``{"type": "vehicle_speed_final", ...}`` events on the frames (the speed
      stage issues one when a vehicle leaves the zone, its track ends or its identity
      splits), in the order they are issued, every source in one file with its ``source``.
    - A final speed decided at a source's end of stream has no frame left to ride on: the
      stage keeps it in its summary (``summary()["sources"][source_id]["vehicles"]``, a list
      of the same records). When a source ends, this sink reads that list through the
      ``summaries`` callable it was given (the pipeline's ``stage_summaries``) and writes the
      rows it has not written yet, so no vehicle is lost at the end of a file. A row is
      written once: it is known by (source, layer, track id, entry time).
    - The file is always created, with its header: a run that measured no vehicle still
      leaves a valid, empty table. Rows are flushed after each batch.
    - Times: ``entry_pts_ns`` / ``exit_pts_ns`` as issued, plus ``entry_s`` / ``exit_s``
      (seconds, 3 decimals) for reading. Speeds in km/h, 2 decimals.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from engine.errors import SinkError
from engine.frame import Batch
from engine.stage import Context

logger = logging.getLogger(__name__)

#: ``Frame.events`` type this sink writes.
FINAL_EVENT = "vehicle_speed_final"
#: The columns of ``vehicles.csv``, in order.
COLUMNS = (
    "source",
    "layer",
    "track_id",
    "segment",
    "class_name",
    "entry_pts_ns",
    "exit_pts_ns",
    "entry_s",
    "exit_s",
    "speed_kmh",
    "speed_ci95_low_kmh",
    "speed_ci95_high_kmh",
    "max_speed_kmh",
    "points",
    "reason",
)


def vehicle_row(source_id: str, event: dict[str, Any]) -> list[Any]:
    """The CSV row of one ``vehicle_speed_final`` record."""
    low, high = event.get("speed_ci95_kmh", (None, None))
    return [
        source_id,
        event.get("layer", ""),
        event["track_id"],
        event.get("segment", 1),
        event.get("class_name", ""),
        event["entry_pts_ns"],
        event["exit_pts_ns"],
        f"{event['entry_pts_ns'] / 1e9:.3f}",
        f"{event['exit_pts_ns'] / 1e9:.3f}",
        event["speed_kmh"],
        low,
        high,
        event.get("max_speed_kmh", ""),
        event.get("points", ""),
        event.get("reason", ""),
    ]


class VehiclesSink:
    """Writes every vehicle's final speed to one CSV file (see the module convention).

    Args:
        path: The ``.csv`` file to create (overwritten; parent folders are created).
        summaries: Returns the stages' summaries (``Pipeline.stage_summaries``), read when a
            source ends for the finals that no frame carried; None to rely on events only.
    """

    def __init__(self, path: Path, *, summaries: Callable[[], dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self._summaries = summaries
        self._file: TextIO | None = None
        self._writer: Any = None
        self._written: set[tuple[str, str, int, int]] = set()

    @property
    def rows_written(self) -> int:
        """Vehicles written so far."""
        return len(self._written)

    def open(self, context: Context) -> None:
        """Create the file with its header; raise SinkError when it cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)
            self._file.flush()
        except OSError as error:
            raise SinkError(f"cannot create vehicle table {self.path}: {error}") from error
        self._written.clear()

    def write(self, batch: Batch) -> None:
        """Append the rows of the batch's ``vehicle_speed_final`` events."""
        for frame in batch:
            self._write_rows(frame.source_id, (e for e in frame.events if e.get("type") == FINAL_EVENT))

    def end_of_stream(self, source_id: str) -> None:
        """Write the source's finals that only its stages' summaries hold."""
        if self._summaries is None or self._file is None:
            return
        try:
            summaries = self._summaries()
        except Exception:  # a broken stage summary must not lose the rows already written
            logger.exception("vehicle table: reading the stage summaries failed")
            return
        for summary in summaries.values():
            if not isinstance(summary, dict):
                continue
            source = summary.get("sources", {}).get(source_id, {})
            records = source.get("vehicles", []) if isinstance(source, dict) else []
            self._write_rows(source_id, (r for r in records if r.get("type") == FINAL_EVENT))

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                raise SinkError(f"cannot close vehicle table {self.path}: {error}") from error
            finally:
                self._file = None
            logger.debug("wrote %d vehicles to %s", len(self._written), self.path)

    def _write_rows(self, source_id: str, events: Iterable[dict[str, Any]]) -> None:
        if self._file is None:
            raise SinkError(f"vehicle table {self.path} is not open (call open() before write())")
        wrote = False
        for event in events:
            key = (source_id, str(event.get("layer", "")), int(event["track_id"]), int(event["entry_pts_ns"]))
            if key in self._written:
                continue
            self._written.add(key)
            self._writer.writerow(vehicle_row(source_id, event))
            wrote = True
        if wrote:
            try:
                self._file.flush()
            except OSError as error:
                raise SinkError(f"cannot write vehicle table {self.path}: {error}") from error
