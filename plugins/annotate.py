"""Draws boxes, labels and track traces on the frame's canvas with supervision's annotators.

Convention:
    - Paints on ``Frame.draw_target()`` (the canvas, a copy of the image), never on
      ``Frame.image``; ``draws = True`` lets the pipeline leave the stage out without video.
    - Labels read ``#<track id> <class name> <confidence> <extras>``, e.g.
      ``#12 car 0.87 54 km/h``. A detection whose ``tracker_id`` is -1 (no id, see
      :data:`engine.sinks.serialize.NO_TRACK_ID`) has no ``#id``.
    - Colours: by track id for tracked detections, a neutral grey for a tracked layer's
      detections that have no id (yet), by class for layers that were never tracked.
    - Traces (the last ``trace_length`` centre points of each track) are kept per source and
      layer and forgotten at the end of the source's stream.
    - Readable labels: the text height follows the picture's height (about 1/55 of it, never
      under ``_MIN_TEXT_SCALE``), and labels are kept inside the picture and apart from each
      other (supervision's ``smart_position``). On small videos (320×240 traffic cameras) a
      readable label would cover the vehicle: ``min_height_px`` scales the canvas up by a
      whole factor first (320×240 → 960×720 for 720), so the annotated video is drawn at that
      size; the detections themselves keep the source's pixels.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import supervision as sv

from engine.checks import check_optional_int
from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.stage import BaseStage, Context

logger = logging.getLogger(__name__)

_TRACK_COLORS = list(sv.ColorPalette.DEFAULT.colors)
# The extra last entry of the palette: detections of a tracked layer without an id.
_UNTRACKED_COLOR = sv.Color(r=160, g=160, b=160)
_PALETTE = sv.ColorPalette(colors=[*_TRACK_COLORS, _UNTRACKED_COLOR])
_UNTRACKED_INDEX = len(_TRACK_COLORS)
# OpenCV's Hershey font at scale 1 is about 22 px tall: 0.4 (about 9 px) is the smallest
# text that stays legible in an encoded video; 1/1300 of the height gives about 1/55 of it.
_MIN_TEXT_SCALE = 0.4
_TEXT_SCALE_PER_PX = 1.0 / 1300.0


def _check_names(name: str, value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"annotate: {name} must be a list of non-empty names, got {value!r}")
    return tuple(value)


def format_extra(key: str, values: Any) -> list[str]:
    """Format one ``Detections.data`` column for labels: one string per row, "" for none.

    Units follow the key's suffix: ``*_kmh`` -> ``54 km/h``, ``*_m`` -> ``3.2 m``,
    ``*_mps`` -> ``4.1 m/s``, ``*confidence`` -> ``0.87``; other numbers keep 3 significant
    digits, strings are shown as they are. NaN and multi-valued columns (``landmarks``) give "".
    """
    array = np.asarray(values)
    if array.ndim != 1:
        return [""] * len(array)
    if array.dtype.kind in "iu":
        return [str(value) for value in array.tolist()]
    if array.dtype.kind == "f":
        if key.endswith("_kmh"):
            pattern = "{:.0f} km/h"
        elif key.endswith("_mps"):
            pattern = "{:.1f} m/s"
        elif key.endswith("_m"):
            pattern = "{:.1f} m"
        elif key.endswith("confidence"):
            pattern = "{:.2f}"
        else:
            pattern = "{:.3g}"
        return [pattern.format(v) if v == v else "" for v in array.tolist()]  # NaN != NaN
    return ["" if value is None else str(value) for value in array.tolist()]


class Annotator(BaseStage):
    """Draws detections, labels and traces of some layers on each frame's canvas.

    Args:
        layers: Detection layers to draw, in drawing order.
        trace_length: Number of past centre points drawn per track; 0 draws no traces.
        show_confidence: Put the detection confidence in the label.
        extras: ``Detections.data`` keys appended to the label when the layer has them.
        thickness: Box and trace line width in pixels; None scales with the frame size
            (supervision's ``calculate_optimal_line_thickness``).
        text_scale: OpenCV font scale of labels; None scales with the picture's height
            (module convention).
        min_height_px: Scale the canvas up by the smallest whole factor that makes it at
            least this tall before drawing (None: draw at the source's size).

    Raises:
        ConfigError: An argument is out of range.
    """

    draws = True

    def __init__(
        self,
        *,
        layers: Sequence[str] = (OBJECTS_LAYER,),
        trace_length: int = 30,
        show_confidence: bool = True,
        extras: Sequence[str] = ("speed_kmh", "emotion"),
        thickness: int | None = None,
        text_scale: float | None = None,
        min_height_px: int | None = None,
    ) -> None:
        self.layers = _check_names("layers", layers)
        self.extras = _check_names("extras", extras)
        if isinstance(trace_length, bool) or not isinstance(trace_length, int) or trace_length < 0:
            raise ConfigError(f"annotate: trace_length must be an integer >= 0, got {trace_length!r}")
        if not isinstance(show_confidence, bool):
            raise ConfigError(f"annotate: show_confidence must be true or false, got {show_confidence!r}")
        if thickness is not None and (
            isinstance(thickness, bool) or not isinstance(thickness, int) or thickness < 1
        ):
            raise ConfigError(f"annotate: thickness must be an integer >= 1 or null, got {thickness!r}")
        if text_scale is not None and (
            isinstance(text_scale, bool) or not isinstance(text_scale, (int, float)) or text_scale <= 0
        ):
            raise ConfigError(f"annotate: text_scale must be a number > 0 or null, got {text_scale!r}")
        self.trace_length = trace_length
        self.show_confidence = show_confidence
        self.thickness = thickness
        self.text_scale = None if text_scale is None else float(text_scale)
        self.min_height_px = check_optional_int("annotate: min_height_px", min_height_px, low=16, high=8640)
        # (width, height) -> annotators sized for it; traces per (source_id, layer).
        self._annotators: dict[tuple[int, int], tuple[sv.BoxAnnotator, sv.LabelAnnotator]] = {}
        self._traces: dict[tuple[str, str], sv.TraceAnnotator] = {}

    def open(self, context: Context) -> None:
        """Start with no traces."""
        self._traces.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Draw the configured layers of every frame on its canvas."""
        for frame in batch:
            canvas = frame.draw_target()
            factor = self.scale_factor(canvas.shape[0])
            if factor > 1:
                height, width = canvas.shape[:2]
                canvas = cv2.resize(canvas, (width * factor, height * factor), interpolation=cv2.INTER_LINEAR)
                frame.canvas = canvas
            for layer in self.layers:
                self._draw(frame, layer, canvas, factor)
        return batch

    def scale_factor(self, height: int) -> int:
        """The whole factor the canvas is scaled up by (1 without ``min_height_px``)."""
        if self.min_height_px is None or height <= 0 or height >= self.min_height_px:
            return 1
        return -(-self.min_height_px // height)

    def end_of_stream(self, source_id: str) -> None:
        """Forget the source's traces."""
        for key in [key for key in self._traces if key[0] == source_id]:
            del self._traces[key]

    def close(self) -> None:
        """Drop traces and cached annotators."""
        self._traces.clear()
        self._annotators.clear()

    def labels(self, detections: sv.Detections) -> list[str]:
        """Return the label of every detection (see the module convention)."""
        n = len(detections)
        columns: list[list[str]] = []
        if detections.tracker_id is not None:
            columns.append(
                [f"#{t}" if t != NO_TRACK_ID else "" for t in np.asarray(detections.tracker_id).tolist()]
            )
        if "class_name" in detections.data:
            columns.append(format_extra("class_name", detections.data["class_name"]))
        elif detections.class_id is not None:
            columns.append([str(c) for c in np.asarray(detections.class_id).tolist()])
        if self.show_confidence and detections.confidence is not None:
            columns.append([f"{c:.2f}" for c in np.asarray(detections.confidence).tolist()])
        for key in self.extras:
            if key in detections.data:
                columns.append(format_extra(key, detections.data[key]))
        if not columns:
            return [""] * n
        return [" ".join(part for part in row if part) for row in zip(*columns, strict=True)]

    def _sized_annotators(self, width: int, height: int) -> tuple[sv.BoxAnnotator, sv.LabelAnnotator]:
        annotators = self._annotators.get((width, height))
        if annotators is None:
            thickness = self._line_thickness(width, height)
            text_scale = self.text_scale or max(_MIN_TEXT_SCALE, height * _TEXT_SCALE_PER_PX)
            annotators = (
                sv.BoxAnnotator(color=_PALETTE, thickness=thickness),
                sv.LabelAnnotator(
                    color=_PALETTE,
                    text_scale=text_scale,
                    text_thickness=max(1, round(text_scale * 2)),
                    text_padding=max(2, round(6 * text_scale)),
                    smart_position=True,  # inside the picture, labels apart
                ),
            )
            self._annotators[(width, height)] = annotators
        return annotators

    def _line_thickness(self, width: int, height: int) -> int:
        return self.thickness or sv.calculate_optimal_line_thickness((width, height))

    def _draw(self, frame: Frame, layer: str, canvas: np.ndarray, factor: int = 1) -> None:
        detections = frame.layer(layer)
        if factor > 1 and len(detections) > 0:
            detections = dataclasses.replace(detections, xyxy=np.asarray(detections.xyxy) * factor)
        height, width = canvas.shape[:2]
        tracked = detections.tracker_id is not None
        if self.trace_length > 0:
            key = (frame.source_id, layer)
            trace = self._traces.get(key)
            if trace is None and tracked and len(detections) > 0:
                trace = sv.TraceAnnotator(
                    color=_PALETTE,
                    trace_length=self.trace_length,
                    thickness=self._line_thickness(width, height),
                )
                self._traces[key] = trace
            # An empty frame still goes in: it advances the trace's frame clock, so a track
            # that comes back after a long gap is not joined to its old trail.
            if trace is not None and (tracked or len(detections) == 0):
                trace.annotate(canvas, detections, custom_color_lookup=self._color_lookup(detections))
        if len(detections) == 0:
            return
        lookup = self._color_lookup(detections)
        box_annotator, label_annotator = self._sized_annotators(width, height)
        box_annotator.annotate(canvas, detections, custom_color_lookup=lookup)
        label_annotator.annotate(
            canvas, detections, labels=self.labels(detections), custom_color_lookup=lookup
        )

    @staticmethod
    def _color_lookup(detections: sv.Detections) -> np.ndarray:
        n_colors = len(_TRACK_COLORS)
        if detections.tracker_id is not None:
            tracker_id = np.asarray(detections.tracker_id)
            return np.where(tracker_id != NO_TRACK_ID, tracker_id % n_colors, _UNTRACKED_INDEX)
        if detections.class_id is not None:
            return np.asarray(detections.class_id) % n_colors
        return np.arange(len(detections)) % n_colors
