"""ByteTrack multi-object tracking, one tracker per source, on top of roboflow ``trackers``.

Convention:
    - Reads and rewrites one detection layer (``layer``). The output keeps EVERY input
      detection, in the input order, with every column (``mask``, ``confidence``, ``data``)
      unchanged; ``tracker_id`` is set and, with ``vote_classes`` (the default), the class of
      tracked detections becomes their track's vote (below).
    - One class per track: a detector calls the same van ``car`` in one frame and ``truck``
      in the next. Each tracked detection adds its confidence to its class's tally in its
      track; ``class_id`` and ``data["class_name"]`` become the track's leading class, so
      labels, events, the MOT file and the per-vehicle table name one class per vehicle.
      Measured on the two traffic videos (replaying their detections through the vote):
      weighing votes by box size as well did not flip fewer tracks (6 of 53 and 3-4 of 91
      either way), a leader locked after 15-30 frames flipped 3-5 but left more vehicles
      with a class their life's vote disagrees with; so: confidence only, ratio 2.
      The leader changes only when another class's tally exceeds it by ``class_switch_ratio``
      (a vote that flips back and forth at 50/50 is worse than either answer). The detector's
      own per-frame class stays in ``data["detector_class_id"]`` and
      ``data["detector_class_name"]``. Untracked detections keep theirs.
    - ``tracker_id`` is an ``int`` array; track ids start at 1 per source and never repeat
      within a source during a run: when a source restarts (a camera reconnects), its
      tracker starts afresh but numbers its tracks after the highest id of the previous
      segment, so one camera's MOT file and events never give one id to two objects.
      :data:`engine.sinks.serialize.NO_TRACK_ID` (-1) means "no id": a detection below
      ``low_conf_det_threshold``, one that matched no track, or one whose track is not yet
      confirmed (fewer than ``minimum_consecutive_frames`` consecutive matches).
    - The tracker is class-agnostic (as ByteTrack and ultralytics' ByteTrack are).
    - Time comes from ``Frame.pts_ns``, so dropped or irregular frames predict the right
      motion; a timestamp that does not advance is replaced by one nominal frame later.

Parameters against ultralytics' ``bytetrack.yaml`` (the defaults reproduce it as far as the
trackers API allows):

    - ``track_high_thresh: 0.25`` -> ``high_conf_det_threshold=0.25`` (first-stage split).
    - ``track_low_thresh: 0.1`` -> ``low_conf_det_threshold=0.1`` (below it a detection is
      never associated; implemented here, trackers has no such bound).
    - ``new_track_thresh: 0.25`` -> ``track_activation_threshold=0.25``.
    - ``track_buffer: 30`` -> ``lost_track_buffer=30`` (both in 30-fps frames, scaled by fps).
    - ``match_thresh: 0.8`` (a cost, 1 - IoU) -> ``minimum_iou_threshold=0.2``.
    - a new track is confirmed on its second match -> ``minimum_consecutive_frames=2``.
    - ``fuse_score: True`` has no equivalent: trackers matches on plain IoU.

trackers uses one IoU threshold for both association stages, where ultralytics asks
IoU > 0.5 in its second (low-confidence) stage; ultralytics also confirms tracks born on a
video's very first frame at once (here they need two matches like any other) and drops
detections without a confirmed track from its output (here they stay, with id -1).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from engine.checks import check_bool, check_number
from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.stage import BaseStage, Context
from plugins.track_kalman import CachedStepXYXYEstimator

logger = logging.getLogger(__name__)

#: Frame rate assumed when a source does not report one.
FALLBACK_FPS = 30.0

# Column name, private to this module, carrying each detection's input position through the
# tracker, which returns detections re-ordered.
_INDEX_KEY = "_vistream_index"


@dataclass
class _Vote:
    """One track's confidence-weighted class tally and its current leader."""

    tally: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    leader: int = -1
    last_index: int = 0


@dataclass
class _SourceTrack:
    tracker: ByteTrackTracker
    frame_period_s: float
    last_timestamp_s: float | None = None
    id_offset: int = 0  # highest id given out in this source's earlier segments
    highest_id: int = 0  # highest id given out so far, offset included
    votes: dict[int, _Vote] = field(default_factory=dict)
    frames: int = 0


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"track: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"track: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class ByteTrackStage(BaseStage):
    """Assigns stable track ids to one detection layer with ByteTrack, one tracker per source.

    Use one stage instance per layer to track several layers (e.g. ``objects`` and ``faces``).

    Args:
        layer: Detection layer to track; rewritten in place of the input layer.
        lost_track_buffer: How long a lost track is kept for re-association, in frames at
            30 fps (scaled to the source's fps; with timestamps, ``lost_track_buffer / 30``
            seconds).
        track_activation_threshold: Minimum confidence of an unmatched detection to start a
            new track.
        minimum_consecutive_frames: Consecutive matches before a track gets its id; until
            then its detections carry -1.
        minimum_iou_threshold: Minimum IoU between a predicted track box and a detection to
            associate them (both stages).
        high_conf_det_threshold: Confidence that splits detections into the first
            (high) and second (low) association stage.
        low_conf_det_threshold: Detections below this confidence are not given to the
            tracker at all (kept in the layer with -1), like ultralytics' ``track_low_thresh``.
        vote_classes: Give tracked detections their track's voted class (module docstring).
        class_switch_ratio: How many times the leading class's tally another class must
            reach to take the lead.

    Raises:
        ConfigError: An argument is out of range.
    """

    def __init__(
        self,
        *,
        layer: str = OBJECTS_LAYER,
        lost_track_buffer: int = 30,
        track_activation_threshold: float = 0.25,
        minimum_consecutive_frames: int = 2,
        minimum_iou_threshold: float = 0.2,
        high_conf_det_threshold: float = 0.25,
        low_conf_det_threshold: float = 0.1,
        vote_classes: bool = True,
        class_switch_ratio: float = 2.0,
    ) -> None:
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"track: layer must be a non-empty layer name, got {layer!r}")
        self.layer = layer
        self.tracked_layers = (layer,)
        self.lost_track_buffer = _check_int("lost_track_buffer", lost_track_buffer, 0)
        self.minimum_consecutive_frames = _check_int(
            "minimum_consecutive_frames", minimum_consecutive_frames, 1
        )
        self.track_activation_threshold = _check_fraction(
            "track_activation_threshold", track_activation_threshold
        )
        self.minimum_iou_threshold = _check_fraction("minimum_iou_threshold", minimum_iou_threshold)
        self.high_conf_det_threshold = _check_fraction("high_conf_det_threshold", high_conf_det_threshold)
        self.low_conf_det_threshold = _check_fraction("low_conf_det_threshold", low_conf_det_threshold)
        if self.low_conf_det_threshold > self.high_conf_det_threshold:
            raise ConfigError(
                f"track: low_conf_det_threshold ({self.low_conf_det_threshold}) must not exceed "
                f"high_conf_det_threshold ({self.high_conf_det_threshold})"
            )
        self.vote_classes = check_bool("track: vote_classes", vote_classes)
        self.class_switch_ratio = check_number("track: class_switch_ratio", class_switch_ratio, low=1.0)
        self._context = Context()
        self._sources: dict[str, _SourceTrack] = {}
        # Per source, the highest id of its ended segments: a restart numbers on from here.
        self._id_offsets: dict[str, int] = {}

    def open(self, context: Context) -> None:
        """Remember the sources' frame rates; trackers are created on each source's first frame."""
        self._context = context
        self._sources.clear()
        self._id_offsets.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Track the layer of every frame, in batch order (frames of a source come in order)."""
        for frame in batch:
            frame.layers[self.layer] = self._track(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Forget the source's tracker; a restart numbers its new tracks after the old ones."""
        state = self._sources.pop(source_id, None)
        if state is not None:
            self._id_offsets[source_id] = state.highest_id

    def close(self) -> None:
        """Drop every tracker."""
        self._sources.clear()
        self._id_offsets.clear()

    def _source(self, source_id: str) -> _SourceTrack:
        state = self._sources.get(source_id)
        if state is None:
            info = self._context.sources.get(source_id)
            fps = info.fps if info is not None else None
            if fps is None or not math.isfinite(fps) or fps <= 0:
                logger.info(
                    "track: source %r reports no frame rate; assuming %.0f fps",
                    source_id,
                    FALLBACK_FPS,
                )
                fps = FALLBACK_FPS
            tracker = ByteTrackTracker(
                lost_track_buffer=self.lost_track_buffer,
                frame_rate=float(fps),
                track_activation_threshold=self.track_activation_threshold,
                minimum_consecutive_frames=self.minimum_consecutive_frames,
                minimum_iou_threshold=self.minimum_iou_threshold,
                high_conf_det_threshold=self.high_conf_det_threshold,
                # The library's XYXY filter with less work per call (plugins/track_kalman.py).
                state_estimator_class=CachedStepXYXYEstimator,
            )
            offset = self._id_offsets.get(source_id, 0)
            state = _SourceTrack(
                tracker=tracker, frame_period_s=1.0 / float(fps), id_offset=offset, highest_id=offset
            )
            self._sources[source_id] = state
        return state

    def _timestamp_s(self, state: _SourceTrack, frame: Frame) -> float:
        timestamp_s = frame.pts_ns / 1e9
        last = state.last_timestamp_s
        if last is not None and not timestamp_s > last:
            # trackers skips the whole update on a backwards timestamp (every id -1) and the
            # Kalman predict on a repeated one; one nominal frame later keeps tracking going.
            logger.debug(
                "track: %s frame %d pts %.6f s does not advance past %.6f s; using +1 frame",
                frame.source_id,
                frame.index,
                timestamp_s,
                last,
            )
            timestamp_s = last + state.frame_period_s
        state.last_timestamp_s = timestamp_s
        return timestamp_s

    def _track(self, frame: Frame) -> sv.Detections:
        detections = frame.layer(self.layer)
        state = self._source(frame.source_id)
        timestamp_s = self._timestamp_s(state, frame)

        if detections.confidence is None:
            fed = np.arange(len(detections))
        else:
            fed = np.flatnonzero(np.asarray(detections.confidence) >= self.low_conf_det_threshold)
        # Only boxes and scores go in: the tracker re-orders and copies what it is given, so
        # the real columns stay untouched and the output keeps the input order.
        query = sv.Detections(
            xyxy=np.asarray(detections.xyxy)[fed],
            confidence=None if detections.confidence is None else detections.confidence[fed],
            data={_INDEX_KEY: fed},
        )
        tracked = state.tracker.update(query, timestamp=timestamp_s)

        tracker_id = np.full(len(detections), NO_TRACK_ID, dtype=int)
        if len(tracked) > 0:
            ids = np.asarray(tracked.tracker_id, dtype=int)
            # trackers counts ids from 0; ids from 1 match ultralytics and MOTChallenge.
            numbered = np.where(ids >= 0, ids + 1 + state.id_offset, NO_TRACK_ID)
            tracker_id[tracked.data[_INDEX_KEY]] = numbered
            state.highest_id = max(state.highest_id, int(numbered.max()))
        # A shallow copy with two fields replaced: the columns were validated when the
        # detections were made, and dataclasses.replace would validate them all again.
        out = copy.copy(detections)
        out.tracker_id = tracker_id
        out.data = dict(detections.data)
        if self.vote_classes and out.class_id is not None:
            self._vote(state, out)
        return out

    def _vote(self, state: _SourceTrack, detections: sv.Detections) -> None:
        """Replace tracked detections' classes by their track's vote (module docstring)."""
        state.frames += 1
        class_id = np.asarray(detections.class_id)
        names = detections.data.get("class_name")
        confidence = (
            np.ones(len(detections)) if detections.confidence is None else np.asarray(detections.confidence)
        )
        voted_id = class_id.copy()
        voted_name = None if names is None else np.asarray(names).astype(object)
        track_ids = np.asarray(detections.tracker_id)
        for i in np.flatnonzero(track_ids != NO_TRACK_ID).tolist():
            vote = state.votes.setdefault(int(track_ids[i]), _Vote())
            cid = int(class_id[i])
            vote.tally[cid] = vote.tally.get(cid, 0.0) + float(confidence[i])
            if names is not None:
                vote.names[cid] = str(names[i])
            vote.last_index = state.frames
            if vote.leader < 0 or (
                cid != vote.leader and vote.tally[cid] > self.class_switch_ratio * vote.tally[vote.leader]
            ):
                vote.leader = cid
            voted_id[i] = vote.leader
            if voted_name is not None:
                voted_name[i] = vote.names.get(vote.leader, voted_name[i])
        detections.data["detector_class_id"] = class_id
        detections.class_id = voted_id
        if names is not None and voted_name is not None:
            detections.data["detector_class_name"] = np.asarray(names)
            detections.data["class_name"] = np.array(voted_name.tolist())
        if state.frames % 256 == 0:  # tracks long gone: their tallies are dead weight
            horizon = state.frames - 4 * max(self.lost_track_buffer, 30)
            for track_id in [t for t, v in state.votes.items() if v.last_index < horizon]:
                del state.votes[track_id]
