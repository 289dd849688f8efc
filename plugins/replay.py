"""Replays detections from a MOT-format file or from the synthetic traffic generator.

Convention:
    - MOTChallenge text: one detection per line, ``frame,id,x,y,w,h,conf[,...]`` with
      1-based frame numbers (``first_frame``) and top-left/size boxes in pixels; extra
      columns are ignored. ``id`` is -1 in detection files and the object id in
      ground-truth files. Frame ``k`` of the file goes to the frame whose ``index`` is
      ``k - first_frame``.
    - Synthetic: a ``synthetic://traffic?...`` URI (``uri``, or each source's own URI when
      neither ``path`` nor ``uri`` is given) rebuilds the same scene as the source and replays
      its ground-truth boxes; the scene frame is found from ``pts_ns``, so dropped frames
      stay aligned.
    - Writes the ``layer`` with ``class_name`` / ``class_id`` for every box. Optional Gaussian
      jitter (``jitter_px``, the standard deviation of each box coordinate) is seeded per
      source, so runs repeat exactly. With ``track_ids`` the file's (or generator's) ids are
      written as ``tracker_id`` (-1 where a file has none), to evaluate later stages without
      a tracker.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from engine.errors import ConfigError, SourceError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.sources.synthetic import scene_from_uri
from engine.sources.synthetic_traffic import TrafficScene
from engine.stage import BaseStage, Context

logger = logging.getLogger(__name__)


def load_mot(path: Path) -> tuple[dict[int, np.ndarray], int]:
    """Read a MOT text file into ``{frame: (n, 6) float64 [id, x1, y1, x2, y2, conf]}``.

    Boxes without area (a width or height <= 0, as trackers write for a box squeezed
    against the image border) are skipped, not an error: one such line must not cost the
    whole file.

    Returns:
        The boxes by frame, and how many degenerate boxes were skipped.

    Raises:
        ConfigError: The file is missing or a line is not ``frame,id,x,y,w,h,conf,...``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"replay: cannot read MOT file {path}: {error.strerror}") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(" ", "").split(",")
        try:
            if len(fields) < 7:
                raise ValueError
            rows.append([float(value) for value in fields[:7]])
        except ValueError:
            raise ConfigError(
                f"replay: {path}:{number}: expected 'frame,id,x,y,w,h,conf,...', got {line!r}"
            ) from None
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    degenerate = (table[:, 4] <= 0) | (table[:, 5] <= 0) | ~np.isfinite(table).all(axis=1)
    skipped = int(degenerate.sum())
    if skipped:
        first = int(np.flatnonzero(degenerate)[0])
        logger.warning(
            "replay: %s: skipped %d box(es) without area (the first is box %d)", path, skipped, first + 1
        )
        table = table[~degenerate]
    by_frame: dict[int, np.ndarray] = {}
    frames = table[:, 0].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    table, frames = table[order], frames[order]
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(frames)], strict=True):
        block = table[begin:end]
        boxes = np.column_stack(
            [
                block[:, 1],
                block[:, 2],
                block[:, 3],
                block[:, 2] + block[:, 4],
                block[:, 3] + block[:, 5],
                block[:, 6],
            ]
        )
        by_frame[int(frames[begin])] = boxes
    return by_frame, skipped


class ReplayDetector(BaseStage):
    """A detector that replays known boxes (see the module convention).

    Args:
        path: MOT-format text file.
        uri: ``synthetic://traffic?...`` scene to replay instead of a file.
        layer: Detection layer to write.
        class_name: Class name of every replayed box.
        class_id: Class id of every replayed box (COCO's 2 = car by default).
        jitter_px: Standard deviation of Gaussian noise added to each box coordinate.
        seed: Seed of the jitter.
        track_ids: Write the file's or generator's ids as ``tracker_id``.
        first_frame: Frame number of the file's first frame (1 in MOTChallenge).
        min_confidence: Drop file rows with a lower confidence.

    Raises:
        ConfigError: Both ``path`` and ``uri``, or an argument out of range.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        uri: str | None = None,
        layer: str = OBJECTS_LAYER,
        class_name: str = "car",
        class_id: int = 2,
        jitter_px: float = 0.0,
        seed: int = 0,
        track_ids: bool = False,
        first_frame: int = 1,
        min_confidence: float = 0.0,
    ) -> None:
        if path is not None and uri is not None:
            raise ConfigError("replay: give path (MOT file) or uri (synthetic scene), not both")
        if uri is not None and not str(uri).startswith("synthetic://"):
            raise ConfigError(f"replay: uri must be a synthetic:// scene, got {uri!r}")
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"replay: layer must be a non-empty name, got {layer!r}")
        if not isinstance(class_name, str) or not class_name:
            raise ConfigError(f"replay: class_name must be a non-empty name, got {class_name!r}")
        if isinstance(jitter_px, bool) or not isinstance(jitter_px, (int, float)) or not 0 <= jitter_px < 1e3:
            raise ConfigError(f"replay: jitter_px must be a number >= 0, got {jitter_px!r}")
        for name, value in (("class_id", class_id), ("seed", seed), ("first_frame", first_frame)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"replay: {name} must be an integer >= 0, got {value!r}")
        self.path = None if path is None else Path(path)
        self.uri = uri
        self.layer = layer
        self.class_name = class_name
        self.class_id = class_id
        self.jitter_px = float(jitter_px)
        self.seed = seed
        self.track_ids = bool(track_ids)
        # With ids it stands in for a tracker: the layer gets its MOT file and object events.
        self.tracked_layers = (layer,) if self.track_ids else ()
        self.first_frame = first_frame
        self.min_confidence = float(min_confidence)
        self._mot: dict[int, np.ndarray] = {}
        self.degenerate_skipped = 0  # file boxes without area, and jittered boxes squeezed to none
        self._scenes: dict[str, TrafficScene] = {}
        self._rngs: dict[str, np.random.Generator] = {}
        self._context = Context()

    def open(self, context: Context) -> None:
        """Read the MOT file, or check that every source has a synthetic scene to replay."""

        self._context = context
        self._rngs.clear()
        self._scenes.clear()
        if self.path is not None:
            self._mot, self.degenerate_skipped = load_mot(self.path)
            if len(context.sources) > 1:
                logger.warning("replay: the same MOT file is replayed on %d sources", len(context.sources))
            return
        for source_id, info in context.sources.items():
            uri = self.uri or info.uri
            if not uri.startswith("synthetic://"):
                raise ConfigError(
                    f"replay: source '{source_id}' ({info.uri}) is not synthetic; give the replay "
                    "stage a MOT file (path) or a synthetic:// uri"
                )
            self._scenes[source_id] = scene_from_uri(uri)
        if self.uri is not None and not context.sources:
            self._scenes[""] = scene_from_uri(self.uri)

    def __call__(self, batch: Batch) -> Batch:
        """Write the replayed boxes of every frame."""
        for frame in batch:
            frame.layers[self.layer] = self._detections(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Restart the source's jitter sequence."""
        self._rngs.pop(source_id, None)

    def summary(self) -> dict[str, Any]:
        """Boxes skipped for having no area (in the file, or squeezed by jitter)."""
        return {"degenerate_boxes_skipped": self.degenerate_skipped}

    def _boxes(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.path is not None:
            rows = self._mot.get(frame.index + self.first_frame)
            if rows is None:
                return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
            rows = rows[rows[:, 5] >= self.min_confidence]
            ids = rows[:, 0].astype(np.int64)
            return rows[:, 1:5].copy(), rows[:, 5], np.where(ids > 0, ids, NO_TRACK_ID)
        scene = self._scenes.get(frame.source_id) or self._scenes.get("")
        if scene is None:
            raise SourceError(f"replay: no synthetic scene for source '{frame.source_id}'")
        number = round(frame.pts_ns * scene.fps / 1e9)
        truth = scene.truth(number)
        return truth.xyxy.copy(), np.full(len(truth.xyxy), 0.9), truth.vehicle_id

    def _detections(self, frame: Frame) -> sv.Detections:
        xyxy, confidence, ids = self._boxes(frame)
        n = len(xyxy)
        if self.jitter_px > 0 and n:
            rng = self._rngs.get(frame.source_id)
            if rng is None:
                rng = np.random.default_rng([self.seed, zlib.crc32(frame.source_id.encode())])
                self._rngs[frame.source_id] = rng
            xyxy = xyxy + rng.normal(0.0, self.jitter_px, size=xyxy.shape)
            xyxy = np.column_stack(
                [
                    np.minimum(xyxy[:, 0], xyxy[:, 2]),
                    np.minimum(xyxy[:, 1], xyxy[:, 3]),
                    np.maximum(xyxy[:, 0], xyxy[:, 2]),
                    np.maximum(xyxy[:, 1], xyxy[:, 3]),
                ]
            )
            xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, frame.width)
            xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, frame.height)
            # Jitter can squeeze a box at the border to nothing: skip it, as a detector would.
            keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
            if not keep.all():
                self.degenerate_skipped += int((~keep).sum())
                xyxy, confidence, ids = xyxy[keep], np.asarray(confidence)[keep], np.asarray(ids)[keep]
                n = len(xyxy)
        if n == 0:
            detections = sv.Detections.empty()
            detections.data["class_name"] = np.array([], dtype=str)
            if self.track_ids:
                detections.tracker_id = np.zeros(0, dtype=int)
            return detections
        return sv.Detections(
            xyxy=xyxy.astype(np.float32),
            confidence=np.asarray(confidence, dtype=np.float32),
            class_id=np.full(n, self.class_id, dtype=int),
            tracker_id=np.asarray(ids, dtype=int) if self.track_ids else None,
            data={"class_name": np.full(n, self.class_name)},
        )
