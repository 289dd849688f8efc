"""Line counting: named lines, in/out counts per class, each track counted once per line.

Crossings are found by supervision's ``LineZone`` (one per line and source): it keeps each
track's side of the line and reports a crossing only after the track was seen on the other
side for ``min_frames`` consecutive frames; frames in which the anchor lies on the line's
extension beyond its ends, or in which the box straddles it (several anchors), neither
count nor reset. That is what makes a vehicle hovering on the line count once, not at every
jitter. On top of it this stage counts each track at most once per line (its first
confirmed crossing; a later crossing back is neither counted nor reported), counts by the
track's class name (the voted class after ``track``) instead of the per-frame class id, and
names the two directions.

Direction: walking from ``start`` to ``end``, ``in`` is a crossing from the right-hand side
to the left-hand side (image coordinates, y down: for a line drawn left to right, ``in`` is
an object moving up the image); each line names its directions with ``in``/``out`` labels.

Output: one ``{"type": "line_crossed", "line", "direction", "track_id", "class_name"}``
frame event per counted crossing (the objects sink turns it into an ``update``), counts in
``summary()``, and, when a drawing stage (``annotate``) ran before this one and video is
written, the lines and their counts drawn on the frame.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import supervision as sv

from engine.checks import check_int, check_str
from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.geometry.calibration import Calibration
from engine.stage import BaseStage, Context
from plugins.regions import (
    check_anchor,
    check_classes,
    check_points,
    check_regions,
    class_names,
    draw_label,
    load_plane,
    to_pixels,
)

logger = logging.getLogger(__name__)

_KEYS = {"name", "start", "end", "in", "out", "classes"}
_COLORS = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 165, 255)]


@dataclass(frozen=True)
class LineSpec:
    """One configured line (points as given: pixels, or metres with a calibration)."""

    name: str
    points: np.ndarray
    in_label: str
    out_label: str
    classes: frozenset[str] | None


@dataclass
class _LineState:
    zone: sv.LineZone
    counted: set[int] = field(default_factory=set)


class LineCounter(BaseStage):
    """Counts tracks crossing named lines (see the module docstring).

    Args:
        lines: ``[{name, start: [x, y], end: [x, y], in: label, out: label, classes: [...]}]``;
            ``in``/``out`` default to ``"in"``/``"out"``; ``classes`` limits what is counted.
        layer: The tracked detection layer.
        anchor: Box point whose side of the line decides (``bottom_center``).
        min_frames: Consecutive frames on the new side before a crossing counts.
        calibration: Calibration YAML; when given, line points are road-plane metres.

    Raises:
        ConfigError: An argument is invalid.
    """

    def __init__(
        self,
        *,
        lines: list[dict[str, Any]],
        layer: str = OBJECTS_LAYER,
        anchor: str = "bottom_center",
        min_frames: int = 2,
        calibration: str | None = None,
    ) -> None:
        self.layer = check_str("lines: layer", layer)
        self.anchor = check_anchor("lines", anchor)
        self.min_frames = check_int("lines: min_frames", min_frames, low=1)
        self.calibration = None if calibration is None else check_str("lines: calibration", calibration)
        self.lines: list[LineSpec] = []
        for position, line in enumerate(
            check_regions("lines", "lines", lines, _KEYS, {"name", "start", "end"})
        ):
            where = f"lines: lines[{position}]"
            points = check_points(where, [line["start"], line["end"]], minimum=2, maximum=2)
            labels = (
                check_str(f"{where}.in", line.get("in", "in")),
                check_str(f"{where}.out", line.get("out", "out")),
            )
            if labels[0] == labels[1]:
                raise ConfigError(f"{where}: in and out need different labels, got {labels[0]!r} twice")
            self.lines.append(
                LineSpec(
                    line["name"], points, labels[0], labels[1], check_classes(where, line.get("classes"))
                )
            )
        self._pixels: list[np.ndarray] = []
        self._states: dict[str, list[_LineState]] = {}
        # (line, source) -> direction label -> class name -> count
        self._counts: dict[tuple[str, str], dict[str, Counter[str]]] = {}

    def open(self, context: Context) -> None:
        """Map the lines to pixels (through the calibration, if any)."""
        plane: Calibration | None = load_plane("lines", self.calibration, context)
        self._pixels = [to_pixels(line.points, plane) for line in self.lines]
        for line, pixels in zip(self.lines, self._pixels, strict=True):
            if float(np.hypot(*(pixels[1] - pixels[0]))) < 1.0:
                raise ConfigError(f"lines: line {line.name!r} is shorter than a pixel")
        self._states.clear()
        self._counts.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Count the crossings of every frame, in order."""
        for frame in batch:
            self._count(frame)
            if frame.canvas is not None:
                self._draw(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Forget the source's line states (counts stay in the summary)."""
        self._states.pop(source_id, None)

    def counts(self, source_id: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """Per line, per direction label: ``{"total": n, <class>: n, ...}`` (one source or all)."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for line in self.lines:
            per_direction: dict[str, Counter[str]] = {line.in_label: Counter(), line.out_label: Counter()}
            for (name, source), counts in self._counts.items():
                if name == line.name and (source_id is None or source == source_id):
                    for label, counter in counts.items():
                        per_direction[label].update(counter)
            result[line.name] = {
                label: {"total": sum(counter.values()), **dict(sorted(counter.items()))}
                for label, counter in per_direction.items()
            }
        return result

    def summary(self) -> dict[str, Any]:
        """Counts per line and direction (all sources), and per source when there are several."""
        summary: dict[str, Any] = {"lines": self.counts()}
        sources = sorted({source for _, source in self._counts})
        if len(sources) > 1:
            summary["by_source"] = {source: self.counts(source) for source in sources}
        return summary

    def _source_states(self, source_id: str) -> list[_LineState]:
        states = self._states.get(source_id)
        if states is None:
            states = [
                _LineState(
                    sv.LineZone(
                        start=sv.Point(float(pixels[0, 0]), float(pixels[0, 1])),
                        end=sv.Point(float(pixels[1, 0]), float(pixels[1, 1])),
                        triggering_anchors=[self.anchor],
                        minimum_crossing_threshold=self.min_frames,
                    )
                )
                for pixels in self._pixels
            ]
            self._states[source_id] = states
        return states

    def _count(self, frame: Frame) -> None:
        detections = frame.layer(self.layer)
        states = self._source_states(frame.source_id)
        if detections.tracker_id is None:  # an untracked frame still ages the crossing history
            detections = sv.Detections.empty()
            detections.tracker_id = np.empty(0, dtype=int)
        names = class_names(detections) if len(detections) else []
        for line, state in zip(self.lines, states, strict=True):
            crossed_in, crossed_out = state.zone.trigger(detections)
            for index in np.flatnonzero(crossed_in | crossed_out).tolist():
                track_id = int(detections.tracker_id[index])
                if track_id == NO_TRACK_ID or track_id in state.counted:
                    continue
                class_name = names[index]
                if line.classes is not None and class_name not in line.classes:
                    continue
                state.counted.add(track_id)
                label = line.in_label if crossed_in[index] else line.out_label
                per_direction = self._counts.setdefault(
                    (line.name, frame.source_id), {line.in_label: Counter(), line.out_label: Counter()}
                )
                per_direction[label][class_name] += 1
                frame.events.append(
                    {
                        "type": "line_crossed",
                        "line": line.name,
                        "direction": label,
                        "track_id": track_id,
                        "class_name": class_name,
                    }
                )

    def _draw(self, frame: Frame) -> None:
        canvas = frame.draw_target()
        counts = self.counts(frame.source_id)
        for position, (line, pixels) in enumerate(zip(self.lines, self._pixels, strict=True)):
            color = _COLORS[position % len(_COLORS)]
            start, end = (tuple(int(round(v)) for v in point) for point in pixels)
            cv2.line(canvas, start, end, color, 2, cv2.LINE_AA)
            per_direction = counts[line.name]
            n_in, n_out = per_direction[line.in_label]["total"], per_direction[line.out_label]["total"]
            text = f"{line.name}: {line.in_label} {n_in}  {line.out_label} {n_out}"
            draw_label(canvas, text, (min(start[0], end[0]), min(start[1], end[1]) - 6), color)
