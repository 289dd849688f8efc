"""MOTChallenge tracking results: ``frame,id,x,y,w,h,conf,-1,-1,-1`` text, one line per box.

Convention:
    - Frame numbers start at 1 (``Frame.index + 1``); ``x, y`` is the top-left corner and
      ``w, h`` the size in pixels (2 decimals); ``conf`` has 4 decimals, -1 when the layer has
      no confidences.
    - Only detections with a track id are written (``tracker_id`` -1 means no id).
    - A MOT file holds one sequence, so one source: put ``{source_id}`` in the path
      (``out/{source_id}.txt``) to write one file per source. A source that restarts after
      its end of stream starts a new file (``name-2.txt``): ids and frame numbers restart.
    - Each batch is flushed: a run that stops halfway leaves every frame already written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

import numpy as np

from engine.errors import SinkError
from engine.frame import OBJECTS_LAYER, Batch, Frame
from engine.sinks.base import SOURCE_PLACEHOLDER, next_source_path
from engine.sinks.serialize import has_track_id
from engine.stage import Context

logger = logging.getLogger(__name__)

#: Placeholder in an output path replaced by the source id, for one file per source.


def mot_lines(frame: Frame, layer: str = OBJECTS_LAYER) -> str:
    """Return the MOTChallenge lines (each ending in a newline) of one frame's tracked boxes."""
    detections = frame.layer(layer)
    keep = has_track_id(detections)
    if not keep.any():
        return ""
    xyxy = np.asarray(detections.xyxy, dtype=np.float64)[keep]
    ids = np.asarray(detections.tracker_id)[keep].tolist()
    confidence = (
        np.full(len(ids), -1.0)
        if detections.confidence is None
        else np.asarray(detections.confidence, dtype=np.float64)[keep]
    )
    size = xyxy[:, 2:] - xyxy[:, :2]
    number = frame.index + 1
    return "".join(
        f"{number},{track_id},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{conf:.4f},-1,-1,-1\n"
        for track_id, x, y, w, h, conf in zip(
            ids,
            xyxy[:, 0].tolist(),
            xyxy[:, 1].tolist(),
            size[:, 0].tolist(),
            size[:, 1].tolist(),
            confidence.tolist(),
            strict=True,
        )
    )


class MotSink:
    """Writes one layer's tracks in MOTChallenge format.

    Args:
        path: The ``.txt`` file to create (overwritten; parent folders are created). May
            contain ``{source_id}`` for one file per source; without it, frames of a second
            source raise SinkError.
        layer: The tracked detection layer to write.
    """

    def __init__(self, path: Path, *, layer: str = OBJECTS_LAYER) -> None:
        if not isinstance(layer, str) or not layer:
            raise SinkError(f"MOT output {path}: layer must be a non-empty layer name, got {layer!r}")
        self.path = Path(path)
        self.layer = layer
        self._files: dict[str, TextIO] = {}
        self._runs: dict[str, int] = {}  # files started per source
        self._opened = False

    def open(self, context: Context) -> None:
        """Check the output folder can be created; files are created on each source's first frame."""
        if SOURCE_PLACEHOLDER not in str(self.path.parent):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SinkError(f"cannot create the folder of MOT output {self.path}: {error}") from error
        self._opened = True

    def write(self, batch: Batch) -> None:
        """Append the tracked boxes of every frame and flush."""
        if not self._opened:
            raise SinkError(f"MOT output {self.path} is not open (call open() before write())")
        touched: dict[str, TextIO] = {}
        try:
            for frame in batch:
                file = self._file(frame.source_id)
                file.write(mot_lines(frame, self.layer))
                touched[frame.source_id] = file
            for file in touched.values():
                file.flush()
        except OSError as error:
            raise SinkError(f"cannot write MOT output {self.path}: {error}") from error

    def end_of_stream(self, source_id: str) -> None:
        """Close the source's file; if the source comes back, it gets a new file."""
        file = self._files.pop(source_id, None)
        if file is not None:
            try:
                file.close()
            except OSError as error:
                raise SinkError(f"cannot close MOT output {file.name}: {error}") from error

    def close(self) -> None:
        """Close every file; safe to call twice."""
        files, self._files = self._files, {}
        self._runs.clear()
        self._opened = False
        failure: SinkError | None = None
        for file in files.values():  # close them all, even after one failed
            try:
                file.close()
            except OSError as error:
                failure = failure or SinkError(f"cannot close MOT output {file.name}: {error}")
        if failure is not None:
            raise failure

    def _file(self, source_id: str) -> TextIO:
        file = self._files.get(source_id)
        if file is not None:
            return file
        run = self._runs.get(source_id, 0) + 1
        path = next_source_path(self.path, source_id, run, self._runs, what="MOT output")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = path.open("w", encoding="utf-8", newline="\n")
        except OSError as error:
            raise SinkError(f"cannot create MOT output {path}: {error}") from error
        logger.debug("writing %s tracks of %s to %s", self.layer, source_id, path)
        self._runs[source_id] = run
        self._files[source_id] = file
        return file
