"""JSON Lines output: one JSON object per frame, flushed after every batch.

The schema is :mod:`engine.sinks.serialize`'s: ``{"source", "frame", "pts_ns", "layers": {...}}``
plus ``"skipped"`` and ``"events"`` when present. A run that stops halfway leaves one
complete line per frame already written (the file is flushed to the OS after each batch).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

from engine.errors import SinkError
from engine.frame import Batch
from engine.sinks.serialize import frame_to_record, to_json_line
from engine.stage import Context

logger = logging.getLogger(__name__)


class JsonlSink:
    """Writes every frame's detections as one JSON line (all sources in one file).

    Args:
        path: The ``.jsonl`` file to create (overwritten; parent folders are created).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: TextIO | None = None
        self.frames_written = 0

    def open(self, context: Context) -> None:
        """Create the file; raise SinkError when it cannot be written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8", newline="\n")
        except OSError as error:
            raise SinkError(f"cannot create JSONL output {self.path}: {error}") from error
        logger.debug("writing detections to %s", self.path)

    def write(self, batch: Batch) -> None:
        """Append one line per frame and flush."""
        if self._file is None:
            raise SinkError(f"JSONL output {self.path} is not open (call open() before write())")
        if len(batch) == 0:
            return
        text = "".join(to_json_line(frame_to_record(frame)) + "\n" for frame in batch)
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as error:
            raise SinkError(f"cannot write JSONL output {self.path}: {error}") from error
        self.frames_written += len(batch)

    def end_of_stream(self, source_id: str) -> None:
        """Nothing is kept per source; every line is already flushed."""

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                raise SinkError(f"cannot close JSONL output {self.path}: {error}") from error
            finally:
                self._file = None
            logger.debug("wrote %d frames to %s", self.frames_written, self.path)
