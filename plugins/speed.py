"""Vehicle speed from a road-plane homography, per track, timed by frame timestamps.

The method (a field method, kept as it is):

- A calibration maps image pixels to road-plane metres (:mod:`engine.geometry.calibration`). Each
  detection's reference point (``anchor``, by default the bottom-centre of its box, where a
  vehicle touches the road) is mapped with it in float64, both axes kept.
- Per track, observations are counted from that track's own first observation in the zone
  (never from a global clock, which would make a track that appears just after a tick wait
  up to 2n-1 frames). A measurement is the displacement between the track's positions
  ``window_frames`` (n) observations apart divided by the difference of their ``pts_ns``,
  so dropped or irregular frames keep the right time. Measurements are taken every
  ``window_stride`` observations: n gives consecutive, non-overlapping windows, literally
  the field method; 1 (the default) ends a window at every observation: the same windows
  counted from the track's start, more of them from the same frames, so the average is
  less noisy for the same delay (``benchmarks/speed_accuracy.py`` compares both).
- The reported speed is the norm of the moving average of the last ``smoothing_window``
  (k) accepted measurements, averaged as velocity vectors: the norm of one noisy
  displacement is biased upward (badly at low speeds), the norm of the mean is not. No speed
  is reported before ``min_measurements`` (default k) measurements exist. The defaults
  (n = k = 15, overlapping) are tuned for 30 fps; scale them with the frame rate.
- Positions outside the calibrated area (the mask polygon, else the rectangle), and those of
  boxes cut by the image border on the anchor's side, are not used: they are not
  observations. A measurement above ``max_speed_kmh`` is rejected, and so is one that
  departs from the track's current mean velocity by more than ``max_acceleration_ms2``
  times the time between them (at least one window) plus three times the scatter of the
  accepted measurements (so that noise alone never freezes a track on a stale average);
  both are counted. After ``restart_after`` rejections in a row the track's history is
  dropped and its windows start again from the current observation (an id switch or a bad
  first window), so a wrong history cannot lock a track out. The default,
  ``ceil(n / stride) + 2``, lets every window that spans one jump of the box be rejected
  first, so a restart never starts from a window that still spans it.

Output (``Detections.data`` of ``layer``): ``speed_kmh`` (n,) float64, NaN where unknown
(untracked, outside the zone, or not enough measurements yet); ``world_xy_m`` (n, 2) float64
road-plane position of the anchor, NaN outside the zone. Reads ``tracker_id`` (-1 means no
track): a track stage must run before this one.

Camera-shift alarm (:mod:`plugins.speed_alarm`): per source, each track's smoothed speed
(once its first smoothing window is full) feeds a running comparison with a baseline; when
it departs, one ``{"type": "calibration_suspect", ...}`` event goes on that frame's
``events``, once per excursion.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, StageError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.geometry.calibration import Calibration
from engine.geometry.plane import ANCHORS, box_anchors
from engine.stage import BaseStage, Context
from plugins.speed_alarm import DEFAULT_SHIFT_THRESHOLD, ShiftAlarm, ShiftStatistic

logger = logging.getLogger(__name__)

# The acceleration check needs a few measurements to know the track's speed and scatter.
_MIN_FOR_ACCELERATION_CHECK = 3
_NOISE_SIGMAS = 3.0
_MAX_FINISHED_TRACKS = 10_000  # per source, in the summary; older ones only count in totals


@dataclass
class _Track:
    """One track's speed state: a ring of its last n+1 observations and its measurements."""

    capacity: int
    pts_ns: np.ndarray = field(init=False)
    xy_m: np.ndarray = field(init=False)
    observations: int = 0
    # Accepted measurements as (vx m/s, vy m/s, mid-window time s); a deque of at most k.
    measurements: deque[tuple[float, float, float]] = field(default_factory=deque)
    rejected_in_row: int = 0
    last_seen_ns: int = 0
    sampled: bool = False
    reported_kmh: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("measurements", "rejected_max_speed", "rejected_max_acceleration", "rejected_time", "restarts"),
            0,
        )
    )
    first_pts_ns: int | None = None

    def __post_init__(self) -> None:
        self.pts_ns = np.zeros(self.capacity, dtype=np.int64)
        self.xy_m = np.zeros((self.capacity, 2), dtype=np.float64)

    def restart(self) -> None:
        self.observations = 0
        self.measurements.clear()
        self.rejected_in_row = 0

    def velocity(self) -> tuple[float, float, float, float]:
        """Mean velocity (vx, vy) of the accepted measurements, their mean time and spread.

        Velocity vectors are averaged before taking the norm: the norm of a single noisy
        displacement is biased upward (more so at low speeds), their mean is not.
        """
        rows = np.asarray(self.measurements)
        mean = rows.mean(axis=0)
        spread = float(np.sqrt(np.mean(np.sum((rows[:, :2] - mean[:2]) ** 2, axis=1))))
        return float(mean[0]), float(mean[1]), float(mean[2]), spread


@dataclass
class _SourceState:
    tracks: dict[int, _Track]
    alarm: ShiftAlarm
    finished: deque[dict[str, Any]]
    totals: dict[str, int]
    checked_size: bool = False
    next_sweep_ns: int = 0


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"speed: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ConfigError(f"speed: {name} must be a number > 0, got {value!r}")
    return float(value)


class SpeedEstimator(BaseStage):
    """Adds ``speed_kmh`` and ``world_xy_m`` to tracked objects (see the module docstring).

    Args:
        calibration: Calibration YAML of the camera view.
        layer: Detection layer to read and annotate (a track stage must have run on it).
        window_frames: n, observations between the two positions of a measurement.
        smoothing_window: k, accepted measurements averaged into the reported speed.
        window_stride: Observations between consecutive measurements: 1 (a measurement at
            every observation, overlapping windows) or None for n (non-overlapping).
        min_measurements: Measurements needed before a speed is reported; None means k.
        anchor: Box reference point, one of :data:`engine.geometry.plane.ANCHORS`.
        max_speed_kmh: Measurements above this are rejected.
        max_acceleration_ms2: A measurement that departs from the track's current velocity
            by more than this times the time between them (at least one window), plus three
            times the measurements' scatter, is rejected.
        restart_after: Consecutive rejections after which a track's history starts again;
            None means ``ceil(window_frames / window_stride) + 2``.
        border_margin_px: Boxes within this distance of the image border, on the sides that
            define the anchor, are not used (a cut box moves its anchor).
        forget_after_s: A track unseen for this long (by timestamps) is dropped.
        shift_statistic: Camera-shift alarm test: ``median_ratio``, ``ks`` or ``off``.
        shift_threshold: Its threshold (ratio > 1, or p-value); None for the default.
        shift_baseline_tracks: Tracks that form the baseline of the alarm.
        shift_window_tracks: Recent tracks compared with the baseline.

    Raises:
        ConfigError: An argument is out of range.
        CalibrationError: (in ``open``) the calibration is invalid or its image size differs
            from a source's.
    """

    def __init__(
        self,
        *,
        calibration: Path,
        layer: str = OBJECTS_LAYER,
        window_frames: int = 15,
        smoothing_window: int = 15,
        window_stride: int | None = 1,
        min_measurements: int | None = None,
        anchor: str = "bottom_center",
        max_speed_kmh: float = 250.0,
        max_acceleration_ms2: float = 15.0,
        restart_after: int | None = None,
        border_margin_px: float = 2.0,
        forget_after_s: float = 2.0,
        shift_statistic: ShiftStatistic = "median_ratio",
        shift_threshold: float | None = None,
        shift_baseline_tracks: int = 50,
        shift_window_tracks: int = 30,
    ) -> None:
        if not isinstance(calibration, (str, Path)):
            raise ConfigError(f"speed: calibration must be a path, got {calibration!r}")
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"speed: layer must be a non-empty layer name, got {layer!r}")
        if anchor not in ANCHORS:
            raise ConfigError(f"speed: anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
        if shift_statistic not in DEFAULT_SHIFT_THRESHOLD:
            raise ConfigError(
                f"speed: shift_statistic must be median_ratio, ks or off, got {shift_statistic!r}"
            )
        self.calibration_path = Path(calibration)
        self.layer = layer
        self.window_frames = _positive_int("window_frames", window_frames)
        self.smoothing_window = _positive_int("smoothing_window", smoothing_window)
        self.window_stride = (
            self.window_frames if window_stride is None else _positive_int("window_stride", window_stride)
        )
        self.min_measurements = (
            self.smoothing_window
            if min_measurements is None
            else _positive_int("min_measurements", min_measurements)
        )
        if self.min_measurements > self.smoothing_window:
            raise ConfigError(
                f"speed: min_measurements ({self.min_measurements}) cannot exceed smoothing_window "
                f"({self.smoothing_window})"
            )
        self.anchor = anchor
        self.max_speed_kmh = _positive_float("max_speed_kmh", max_speed_kmh)
        self.max_acceleration_ms2 = _positive_float("max_acceleration_ms2", max_acceleration_ms2)
        self.restart_after = (
            -(-self.window_frames // self.window_stride) + 2
            if restart_after is None
            else _positive_int("restart_after", restart_after)
        )
        if (
            isinstance(border_margin_px, bool)
            or not isinstance(border_margin_px, (int, float))
            or border_margin_px < 0
        ):
            raise ConfigError(f"speed: border_margin_px must be a number >= 0, got {border_margin_px!r}")
        self.border_margin_px = float(border_margin_px)
        self.forget_after_s = _positive_float("forget_after_s", forget_after_s)
        self.shift_statistic = shift_statistic
        threshold = DEFAULT_SHIFT_THRESHOLD[shift_statistic] if shift_threshold is None else shift_threshold
        if shift_statistic == "median_ratio" and not (isinstance(threshold, (int, float)) and threshold > 1):
            raise ConfigError(
                f"speed: shift_threshold for median_ratio must be a ratio > 1, got {threshold!r}"
            )
        if shift_statistic == "ks" and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
            raise ConfigError(f"speed: shift_threshold for ks must be a p-value in (0, 1), got {threshold!r}")
        self.shift_threshold = float(threshold)
        self.shift_baseline_tracks = _positive_int("shift_baseline_tracks", shift_baseline_tracks)
        self.shift_window_tracks = _positive_int("shift_window_tracks", shift_window_tracks)
        fx, fy = ANCHORS[anchor]
        # Box sides whose cut by the image border moves the anchor: x1, y1, x2, y2.
        self._anchor_sides = np.array([fx < 1.0, fy < 1.0, fx > 0.0, fy > 0.0])
        self._calibration: Calibration | None = None
        self._sources: dict[str, _SourceState] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, context: Context) -> None:
        """Load the calibration and check it against every source's frame size."""
        calibration = Calibration.load(self.calibration_path)
        for source_id, info in context.sources.items():
            calibration.check_image_size(info.width, info.height, source_id)
        self._calibration = calibration
        self._sources.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Annotate every frame's layer with speeds and world positions."""
        for frame in batch:
            self._process(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Finish the source's tracks (kept for the summary) and forget their state.

        A restarted source starts with no tracks and relearns the alarm's baseline (its event
        count is kept).
        """
        state = self._sources.get(source_id)
        if state is None:
            return
        for track_id in list(state.tracks):
            self._finish(state, track_id)
        state.totals["calibration_suspect_events"] += state.alarm.events
        state.alarm = self._new_alarm()
        state.checked_size = False
        state.next_sweep_ns = 0

    def close(self) -> None:
        """Drop every source's live state (the summary keeps finished tracks)."""
        for state in self._sources.values():
            for track_id in list(state.tracks):
                self._finish(state, track_id)

    def summary(self) -> dict[str, Any]:
        """Per source: per-track speed statistics in the zone and rejection counts."""
        sources = {}
        for source_id, state in self._sources.items():
            live = [self._track_summary(track_id, track) for track_id, track in state.tracks.items()]
            tracks = [t for t in [*state.finished, *live] if t["frames_with_speed"] > 0]
            totals = dict(state.totals)
            for track in state.tracks.values():
                for key, value in track.counts.items():
                    totals[key] = totals.get(key, 0) + value
            totals["calibration_suspect_events"] += state.alarm.events
            sources[source_id] = {"tracks": tracks, "totals": totals}
        calibration = self._calibration
        return {
            "calibration": None if calibration is None else calibration.camera,
            "window_frames": self.window_frames,
            "smoothing_window": self.smoothing_window,
            "window_stride": self.window_stride,
            "sources": sources,
        }

    # -- per frame --------------------------------------------------------------------------

    def _new_alarm(self) -> ShiftAlarm:
        return ShiftAlarm(
            self.shift_statistic, self.shift_threshold, self.shift_baseline_tracks, self.shift_window_tracks
        )

    def _source(self, frame: Frame) -> _SourceState:
        state = self._sources.get(frame.source_id)
        if state is None:
            totals = dict.fromkeys(
                (
                    "tracks",
                    "measurements",
                    "rejected_max_speed",
                    "rejected_max_acceleration",
                    "rejected_time",
                    "restarts",
                    "calibration_suspect_events",
                ),
                0,
            )
            state = _SourceState({}, self._new_alarm(), deque(maxlen=_MAX_FINISHED_TRACKS), totals)
            self._sources[frame.source_id] = state
        return state

    def _process(self, frame: Frame) -> None:
        calibration = self._calibration
        if calibration is None:
            raise StageError("speed: __call__ before open()")
        state = self._source(frame)
        if not state.checked_size:
            calibration.check_image_size(frame.width, frame.height, frame.source_id)
            state.checked_size = True
        detections = frame.layer(self.layer)
        n = len(detections)
        speed_kmh = np.full(n, np.nan)
        world = np.full((n, 2), np.nan)
        if n:
            if detections.tracker_id is None:
                raise StageError(
                    f"speed: layer '{self.layer}' has no tracker ids; put a track stage before speed"
                )
            anchors = box_anchors(detections.xyxy, self.anchor)
            usable = calibration.in_zone(anchors) & ~self._cut(detections.xyxy, frame.width, frame.height)
            if usable.any():
                world[usable] = calibration.image_to_world(anchors[usable])
                usable &= np.isfinite(world).all(axis=1)
            track_ids = np.asarray(detections.tracker_id)
            for i in np.flatnonzero(usable & (track_ids != NO_TRACK_ID)).tolist():
                speed_kmh[i] = self._observe(state, frame, int(track_ids[i]), world[i])
        detections.data["speed_kmh"] = speed_kmh
        detections.data["world_xy_m"] = world
        frame.layers[self.layer] = detections
        if frame.pts_ns >= state.next_sweep_ns:
            self._sweep(state, frame.pts_ns)

    def _cut(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        margin = self.border_margin_px
        boxes = np.asarray(xyxy, dtype=np.float64)
        touches = np.column_stack(
            [
                boxes[:, 0] <= margin,
                boxes[:, 1] <= margin,
                boxes[:, 2] >= width - margin,
                boxes[:, 3] >= height - margin,
            ]
        )
        return (touches & self._anchor_sides).any(axis=1)

    def _observe(self, state: _SourceState, frame: Frame, track_id: int, xy_m: np.ndarray) -> float:
        """Add one in-zone observation of a track; return its reported speed (km/h or NaN)."""
        track = state.tracks.get(track_id)
        if track is not None and frame.pts_ns - track.last_seen_ns > self.forget_after_s * 1e9:
            self._finish(state, track_id)  # an id seen again after a long gap: a new vehicle
            track = None
        if track is None:
            track = _Track(capacity=self.window_frames + 1)
            track.first_pts_ns = frame.pts_ns
            state.tracks[track_id] = track
        track.last_seen_ns = frame.pts_ns
        slot = track.observations % track.capacity
        track.pts_ns[slot] = frame.pts_ns
        track.xy_m[slot] = xy_m
        track.observations += 1
        latest = track.observations - 1  # index of this observation, from the track's first
        if latest >= self.window_frames and latest % self.window_stride == 0:
            self._measure(track, slot, (latest - self.window_frames) % track.capacity)
        if len(track.measurements) < self.min_measurements:
            return math.nan
        vx, vy, _, _ = track.velocity()
        speed = 3.6 * math.hypot(vx, vy)
        track.reported_kmh.append(speed)
        if not track.sampled and len(track.measurements) >= self.smoothing_window:
            track.sampled = True
            event = state.alarm.add(speed)
            if event is not None:
                event.update(source_id=frame.source_id, track_id=track_id, pts_ns=frame.pts_ns)
                frame.events.append(event)
                logger.warning(
                    "speed: %s: measured speeds departed from the baseline (%s %.4g): has the camera moved?",
                    frame.source_id,
                    event["statistic"],
                    event["value"],
                )
        return speed

    def _measure(self, track: _Track, end: int, start: int) -> None:
        dt_s = (int(track.pts_ns[end]) - int(track.pts_ns[start])) / 1e9
        if dt_s <= 0:
            track.counts["rejected_time"] += 1  # timestamps that do not advance: no time base
            return
        vx, vy = (track.xy_m[end] - track.xy_m[start]) / dt_s
        speed_ms = math.hypot(vx, vy)
        mid_s = (int(track.pts_ns[end]) + int(track.pts_ns[start])) / 2e9
        reason = None
        if speed_ms * 3.6 > self.max_speed_kmh:
            reason = "rejected_max_speed"
        elif len(track.measurements) >= _MIN_FOR_ACCELERATION_CHECK:
            mean_vx, mean_vy, mean_mid_s, spread = track.velocity()
            # Physically possible change since the measurements' mean time (at least one
            # window), plus the measurements' own scatter: noise alone must not be rejected,
            # or a noisy track would freeze on a stale average.
            allowed = self.max_acceleration_ms2 * max(mid_s - mean_mid_s, dt_s) + _NOISE_SIGMAS * spread
            if math.hypot(vx - mean_vx, vy - mean_vy) > allowed:
                reason = "rejected_max_acceleration"
        if reason is not None:
            track.counts[reason] += 1
            track.rejected_in_row += 1
            logger.debug("speed: rejected %.1f km/h (%s)", speed_ms * 3.6, reason)
            if track.rejected_in_row >= self.restart_after:
                # Keep only the current observation: windows start again from it.
                track.pts_ns[0], track.xy_m[0] = track.pts_ns[end], track.xy_m[end].copy()
                track.restart()
                track.observations = 1
                track.counts["restarts"] += 1
            return
        track.rejected_in_row = 0
        track.counts["measurements"] += 1
        track.measurements.append((float(vx), float(vy), mid_s))
        while len(track.measurements) > self.smoothing_window:
            track.measurements.popleft()

    def _sweep(self, state: _SourceState, now_ns: int) -> None:
        forget_ns = round(self.forget_after_s * 1e9)
        for track_id in [t for t, track in state.tracks.items() if now_ns - track.last_seen_ns > forget_ns]:
            self._finish(state, track_id)
        state.next_sweep_ns = now_ns + forget_ns // 4

    def _finish(self, state: _SourceState, track_id: int) -> None:
        track = state.tracks.pop(track_id)
        for key, value in track.counts.items():
            state.totals[key] = state.totals.get(key, 0) + value
        state.totals["tracks"] = state.totals.get("tracks", 0) + 1
        state.finished.append(self._track_summary(track_id, track))

    @staticmethod
    def _track_summary(track_id: int, track: _Track) -> dict[str, Any]:
        values = np.asarray(track.reported_kmh)
        stats: dict[str, Any] = {
            "track_id": track_id,
            "first_pts_ns": track.first_pts_ns,
            "last_pts_ns": track.last_seen_ns,
            "frames_with_speed": len(values),
        }
        if len(values):
            stats.update(
                max_kmh=round(float(values.max()), 2),
                mean_kmh=round(float(values.mean()), 2),
                median_kmh=round(float(np.median(values)), 2),
            )
        stats.update(track.counts)
        return stats
