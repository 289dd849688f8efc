"""The data model: a decoded picture (`Frame`), a group of them (`Batch`), source facts.

Convention:
    - ``Frame.image`` is an H×W×3 ``uint8`` BGR numpy array on the CPU, or a 3×H×W ``uint8``
      torch tensor on the engine's GPU. Stages that only work on one kind say so.
    - Detections are ``supervision.Detections`` kept in named layers (``objects``, ``faces``).
      Boxes are ``xyxy`` float32 pixels of the frame they belong to.
    - Per-object extras live in ``Detections.data`` under documented keys with units in the
      name: ``class_name``, ``speed_kmh``, ``landmarks`` (n,5,2 pixels), ``emotion``,
      ``emotion_confidence``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import supervision as sv

#: The layer that object detectors write and trackers read by default.
OBJECTS_LAYER = "objects"

#: ``Detections.tracker_id`` of a detection that has no track (yet).
NO_TRACK_ID = -1


@dataclass(frozen=True)
class SourceInfo:
    """What is known about a video source once it is open.

    Attributes:
        source_id: Short stable name of the source, used as a key for per-source state.
        uri: Where the frames come from, with any credentials masked.
        width: Frame width in pixels (0 when not known before the first frame).
        height: Frame height in pixels (0 when not known before the first frame).
        fps: Nominal frame rate reported by the container or camera, or None if unknown.
        live: True for cameras and network streams, False for files and finite test sources.
        frame_count: Number of frames the container declares, or None if unknown.
    """

    source_id: str
    uri: str
    width: int
    height: int
    fps: float | None
    live: bool
    frame_count: int | None = None


@dataclass
class Frame:
    """One decoded picture of one source, plus everything stages found in it.

    Attributes:
        source_id: Name of the source the frame came from.
        index: Position of the frame in its source, from 0.
        pts_ns: Presentation timestamp in nanoseconds, from the container or camera clock.
        image: The pixels (see the module convention).
        capture_ns: ``time.monotonic_ns()`` when the decoder delivered the frame; frame age
            and end-to-end latency are measured from it.
        layers: Named detection layers.
        canvas: A BGR copy of ``image`` that drawing stages paint on; None until one does.
        skipped_reason: Set when a stage failed on this frame under the ``skip`` policy.
        events: Things stages noticed on this frame that are not detections, as JSON-ready
            dicts with a ``"type"`` key (for example ``{"type": "calibration_suspect", ...}``);
            the JSONL sink writes them with the frame.
    """

    source_id: str
    index: int
    pts_ns: int
    image: Any
    capture_ns: int = field(default_factory=time.monotonic_ns)
    layers: dict[str, sv.Detections] = field(default_factory=dict)
    canvas: np.ndarray | None = None
    skipped_reason: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def height(self) -> int:
        """Image height in pixels."""
        shape = tuple(self.image.shape)
        return int(shape[0] if len(shape) == 3 and shape[2] == 3 else shape[1])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        shape = tuple(self.image.shape)
        return int(shape[1] if len(shape) == 3 and shape[2] == 3 else shape[2])

    def layer(self, name: str) -> sv.Detections:
        """Return the named detection layer, or an empty one if no stage wrote it."""
        detections = self.layers.get(name)
        return detections if detections is not None else sv.Detections.empty()

    def draw_target(self) -> np.ndarray:
        """Return the canvas to draw on, creating it from the image on first use."""
        if self.canvas is None:
            image = self.image
            if not isinstance(image, np.ndarray):  # a 3×H×W BGR torch tensor (GPU frames)
                image = image.permute(1, 2, 0).contiguous().cpu().numpy()
            self.canvas = image.copy()
        return self.canvas


@dataclass
class Batch:
    """A sequence of frames, possibly from several sources, processed together by each stage.

    A stage returns the batch it was given: the same frames (by source and index), in the same
    order. The one way to return fewer is :meth:`drop`, which says why; the pipeline counts
    and reports every drop (``dropped_by_stage`` in the summary) and refuses any other change.

    Attributes:
        frames: The frames, in order.
        dropped: Frames taken out by :meth:`drop` during the current stage call, with reasons.
    """

    frames: list[Frame]
    dropped: list[tuple[Frame, str]] = field(default_factory=list)

    def drop(self, frame: Frame, reason: str) -> None:
        """Take ``frame`` out of the batch on purpose; ``reason`` is counted and reported.

        Raises:
            ValueError: ``frame`` is not in the batch, or ``reason`` is empty.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a dropped frame needs a reason (a non-empty string)")
        for position, candidate in enumerate(self.frames):
            if candidate is frame:
                del self.frames[position]
                self.dropped.append((frame, reason))
                return
        raise ValueError(f"frame {frame.source_id}/{frame.index} is not in this batch")

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __getitem__(self, position: int) -> Frame:
        return self.frames[position]

    @classmethod
    def of(cls, frames: Sequence[Frame]) -> Batch:
        """Build a batch from any sequence of frames."""
        return cls(frames=list(frames))
