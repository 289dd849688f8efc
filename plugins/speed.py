"""Vehicle speed from a road-plane homography, per track, timed by frame timestamps.

The method:

- A calibration maps image pixels to road-plane metres (:mod:`engine.geometry.calibration`).
  Each detection's reference point (``anchor``, by default the bottom-centre of its box,
  where a vehicle touches the road) is mapped with it, and so is its noise: each box
  coordinate is taken to move by ``box_noise_px`` (one sigma), and the calibration's
  Jacobian at the anchor turns that into a position covariance in m². Boxes outside the
  calibrated area (mask polygon, else rectangle), and boxes cut by the image border on the
  anchor's side, give no observation.
- Per track, the in-zone positions form a *path*; all times are the frames' ``pts_ns``, so
  one setting serves 25, 30 and 60 fps and dropped frames cost nothing but points.
- The current speed is a weighted robust line fit (:mod:`plugins.speed_fit`) over a recent
  stretch of the path, at most ``window_s`` long and at least ``min_window_s``. A stretch's
  predicted 95 % error is its noise (from the box noise model and the fit's residuals) plus
  its lag's: a line gives the speed at its points' mean time, behind the speed now by the
  acceleration times that lag; the acceleration is a quadratic's over the last
  ``2 * window_s``, shrunk by its own uncertainty (about 0 for a constant speed); it corrects
  the lag, and what stays uncertain of it times the lag is in the error. The stretch is
  the shortest whose predicted error is within ``speed_error_kmh`` (responsive), else the one
  of least predicted error if within the looser ``first_speed_error_kmh``: a speed appears as
  soon as the vehicle has travelled far enough for that budget at that spot (a few frames
  near the camera, longer far away where a pixel is worth more) and is refined as it goes;
  an accelerating vehicle gets short windows. A vehicle's first speed, while its
  acceleration is barely known, may instead meet the noise-only budget, uncorrected.
  (Figures: :mod:`plugins.speed_fit`.) Speeds above ``max_speed_kmh`` are not shown.
- Identity guard: each new position is compared with the path's motion (its fitted line,
  the fit's uncertainty, the box noise and what ``max_acceleration_ms2`` allows since); one
  farther than ``gate_sigmas`` sigmas, or whose box height changes by more than
  ``max_box_change`` times against the previous one, is held back, not used. A box that
  kept its top but lost its lower part (a vehicle in front hides the wheels, so the anchor
  is off the road) is skipped as ``occluded``: it is the same vehicle. If the next
  observation fits again, it was a glitch (counted as ``outliers``); after
  ``split_after_points`` held back in a row, the track is another vehicle now: the path is
  closed (its final speed issued), a ``track_identity_split`` event goes out and a new path
  starts from the held-back positions. Two vehicles are never blended into one speed.
- Final speed: when a vehicle leaves the zone (seen outside it for ``exit_after_s``), its
  track is unseen for ``forget_after_s``, its identity splits, the source's declared last
  frame is processed, or the stream ends, the line fit through the whole path gives its
  mean speed and a 95 % interval. It goes out as one ``vehicle_speed_final`` event on the
  frame where it was decided (``engine.sinks.vehicles`` writes them to ``vehicles.csv``)
  and into the summary. Paths with fewer than ``min_final_points`` points are dropped
  (counted as ``too_short``).
- End of stream: ``end_of_stream`` cannot put events on a frame that was already written,
  so the finals it issues go into the summary at once (where ``vehicles.csv``'s sink reads
  them when the source ends) and onto the next frame of that source, if it restarts. For a
  file whose container declares its frame count, vehicles still in the zone are finalized
  on that last frame already, so ``events.jsonl`` has them too.

Output (``Detections.data`` of ``layer``): ``speed_kmh`` (n,) float64, the current speed,
NaN where unknown (untracked, outside the zone, held back, or not enough travel yet);
``world_xy_m`` (n, 2) float64 road-plane position of the anchor, NaN outside the zone.
Reads ``tracker_id`` (-1 means no track): a track stage must run before this one.

Camera-shift alarm (:mod:`plugins.speed_alarm`): per source, each vehicle whose final speed
is issued feeds a running comparison with a baseline (by default the ratio of its width across
the road, its box's bottom edge on the road plane, over the far and the near half of its path:
steady under a right calibration whatever the traffic does, moved by a moved camera); when it
departs, one ``{"type": "calibration_suspect", ...}`` event goes on that frame's ``events``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.checks import check_int, check_number
from engine.errors import ConfigError, StageError
from engine.frame import NO_TRACK_ID, OBJECTS_LAYER, Batch, Frame
from engine.geometry.calibration import Calibration
from engine.geometry.plane import ANCHORS, box_anchors, homography_jacobian
from engine.stage import BaseStage, Context
from plugins.speed_alarm import DEFAULT_SHIFT_THRESHOLD, ShiftAlarm, ShiftStatistic
from plugins.speed_fit import Z95, VehiclePath

logger = logging.getLogger(__name__)

#: ``frame.events`` type of a vehicle's final speed.
FINAL_EVENT = "vehicle_speed_final"
#: ``frame.events`` type of a track whose identity changed (its speed history was split).
SPLIT_EVENT = "track_identity_split"
_MAX_VEHICLES = 10_000  # per source, in the summary; older ones only count in totals
_MIN_WINDOW_POINTS = 8  # also where the residuals start to measure the noise (speed_fit)
#: Occlusion from below: a box whose top is where the vehicle's motion puts it (within this
#: share of its height) but whose height shrank by more than this share has its lower part
#: hidden (by a vehicle in front, a sign): its anchor is not where the vehicle touches the road.
_OCCLUSION_SHARE = 0.1
#: Longest run of such boxes taken for the same vehicle; after it the identity gate decides.
_MAX_OCCLUSION_S = 1.0
_TOTALS = (
    "tracks",
    "vehicles",
    "identity_splits",
    "outliers",
    "occluded",
    "too_short",
    "rejected_max_speed",
    "calibration_suspect_events",
)


@dataclass
class _Held:
    """An observation held back by the identity gate."""

    pts_ns: int
    xy_m: np.ndarray
    cov_m2: np.ndarray
    box_top_px: float
    box_h: float
    width_m: float
    reason: str
    jump_m: float


@dataclass
class _Track:
    path: VehiclePath | None = None
    held: list[_Held] = field(default_factory=list)
    last_seen_ns: int = 0
    last_box_top_px: float = math.nan
    last_box_ns: int = 0  # when the box of last_box_top_px was seen
    last_box_h: float = math.nan
    occluded_since_ns: int | None = None
    out_since_ns: int | None = None
    class_name: str = ""
    segment: int = 0


@dataclass
class _SourceState:
    tracks: dict[int, _Track]
    alarm: ShiftAlarm
    vehicles: deque[dict[str, Any]]
    totals: dict[str, int]
    pending: list[dict[str, Any]] = field(default_factory=list)
    checked_size: bool = False
    next_sweep_ns: int = 0


class SpeedEstimator(BaseStage):
    """Adds ``speed_kmh`` and ``world_xy_m`` to tracked objects and issues per-vehicle
    final speeds (see the module docstring).

    Args:
        calibration: Calibration YAML of the camera view.
        layer: Detection layer to read and annotate (a track stage must have run on it).
        window_s: Longest recent stretch of a path the current speed is fitted on.
        min_window_s: Shortest stretch (time travelled before the first speed).
        speed_error_kmh: 95 % half-width of the predicted error (noise and lag) that the
            current speed's window is sized for (the shortest recent stretch that reaches it).
        first_speed_error_kmh: Looser 95 % half-width accepted while no stretch reaches
            ``speed_error_kmh``: the first speeds of a vehicle, far from the camera, and
            strong accelerations (then the stretch of least predicted error is used).
        box_noise_px: Standard deviation of each box coordinate (pixels), the noise model;
            the fit's residuals raise it where boxes are noisier.
        anchor: Box reference point, one of :data:`engine.geometry.plane.ANCHORS`.
        max_speed_kmh: Speeds above this are not shown (a wrong track or calibration).
        max_acceleration_ms2: Acceleration the identity gate allows a vehicle.
        gate_sigmas: Distance from a path's motion, in noise sigmas, beyond which a
            position is held back.
        max_box_change: Box height ratio between two observations beyond which it is held back.
        split_after_points: Observations held back in a row that split the track's path.
        exit_after_s: Time seen outside the zone after which a vehicle has left it.
        min_final_points: Fewest points a path needs for a final speed.
        border_margin_px: Boxes within this distance of the image border, on the sides that
            define the anchor, are not used (a cut box moves its anchor).
        forget_after_s: A track unseen for this long (by timestamps) has ended.
        shift_statistic: Camera-shift alarm test: ``width``, ``profile``, ``median_ratio``,
            ``ks`` or ``off`` (:mod:`plugins.speed_alarm`).
        shift_threshold: Its threshold (ratio > 1, or p-value); None for the default.
        shift_baseline_tracks: Vehicles that form the baseline of the alarm.
        shift_window_tracks: Recent vehicles compared with the baseline.

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
        window_s: float = 1.5,
        min_window_s: float = 0.2,
        speed_error_kmh: float = 1.2,
        first_speed_error_kmh: float = 2.5,
        box_noise_px: float = 1.5,
        anchor: str = "bottom_center",
        max_speed_kmh: float = 250.0,
        max_acceleration_ms2: float = 10.0,
        gate_sigmas: float = 5.0,
        max_box_change: float = 1.6,
        split_after_points: int = 3,
        exit_after_s: float = 0.25,
        min_final_points: int = 3,
        border_margin_px: float = 2.0,
        forget_after_s: float = 2.0,
        shift_statistic: ShiftStatistic = "width",
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
                "speed: shift_statistic must be width, profile, median_ratio, ks or off, "
                f"got {shift_statistic!r}"
            )
        self.calibration_path = Path(calibration)
        self.layer = layer
        self.window_s = check_number("speed: window_s", window_s, low=0.05, high=60.0)
        self.min_window_s = check_number("speed: min_window_s", min_window_s, low=0.0, high=self.window_s)
        self.speed_error_kmh = check_number("speed: speed_error_kmh", speed_error_kmh, low=0.01, high=100.0)
        self.first_speed_error_kmh = check_number(
            "speed: first_speed_error_kmh", first_speed_error_kmh, low=self.speed_error_kmh, high=100.0
        )
        self.box_noise_px = check_number("speed: box_noise_px", box_noise_px, low=0.01, high=100.0)
        self.anchor = anchor
        self.max_speed_kmh = check_number("speed: max_speed_kmh", max_speed_kmh, low=1.0, high=2000.0)
        self.max_acceleration_ms2 = check_number(
            "speed: max_acceleration_ms2", max_acceleration_ms2, low=0.1, high=100.0
        )
        self.gate_sigmas = check_number("speed: gate_sigmas", gate_sigmas, low=1.0, high=1000.0)
        self.max_box_change = check_number("speed: max_box_change", max_box_change, low=1.01, high=100.0)
        self.split_after_points = check_int("speed: split_after_points", split_after_points, low=1)
        self.exit_after_s = check_number("speed: exit_after_s", exit_after_s, low=0.0, high=60.0)
        self.min_final_points = check_int("speed: min_final_points", min_final_points, low=2)
        self.border_margin_px = check_number("speed: border_margin_px", border_margin_px, low=0.0, high=1e4)
        self.forget_after_s = check_number("speed: forget_after_s", forget_after_s, low=0.01, high=3600.0)
        self.shift_statistic = shift_statistic
        threshold = DEFAULT_SHIFT_THRESHOLD[shift_statistic] if shift_threshold is None else shift_threshold
        if shift_statistic == "median_ratio" and not (isinstance(threshold, (int, float)) and threshold > 1):
            raise ConfigError(
                f"speed: shift_threshold for median_ratio must be a ratio > 1, got {threshold!r}"
            )
        if shift_statistic in ("ks", "profile", "width") and not (
            isinstance(threshold, (int, float)) and 0 < threshold < 1
        ):
            raise ConfigError(
                f"speed: shift_threshold for {shift_statistic} must be a p-value in (0, 1), got {threshold!r}"
            )
        self.shift_threshold = float(threshold)
        self.shift_baseline_tracks = check_int("speed: shift_baseline_tracks", shift_baseline_tracks, low=1)
        self.shift_window_tracks = check_int("speed: shift_window_tracks", shift_window_tracks, low=1)
        fx, fy = ANCHORS[anchor]
        # Box sides whose cut by the image border moves the anchor: x1, y1, x2, y2.
        self._anchor_sides = np.array([fx < 1.0, fy < 1.0, fx > 0.0, fy > 0.0])
        # Pixel covariance of the anchor when each box coordinate has unit variance.
        self._anchor_cov_px = np.diag([(1 - fx) ** 2 + fx**2, (1 - fy) ** 2 + fy**2])
        self._calibration: Calibration | None = None
        self._frame_counts: dict[str, int | None] = {}
        self._sources: dict[str, _SourceState] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, context: Context) -> None:
        """Load the calibration and check it against every source's frame size."""
        calibration = Calibration.load(self.calibration_path)
        for source_id, info in context.sources.items():
            calibration.check_image_size(info.width, info.height, source_id)
        self._calibration = calibration
        self._frame_counts = {source_id: info.frame_count for source_id, info in context.sources.items()}
        self._sources.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Annotate every frame's layer with speeds and world positions; issue final speeds."""
        for frame in batch:
            self._process(frame)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Issue the final speed of every vehicle still measured and forget the source's tracks.

        The finals are in the summary at once and go on the next frame of this source if it
        restarts. A restarted source relearns the alarm's baseline (its event count is kept).
        """
        state = self._sources.get(source_id)
        if state is None:
            return
        for track_id in list(state.tracks):
            state.pending.extend(self._finish(state, source_id, track_id, "end_of_stream"))
        state.totals["calibration_suspect_events"] += state.alarm.events
        state.alarm = self._new_alarm()
        state.checked_size = False
        state.next_sweep_ns = 0

    def close(self) -> None:
        """Finish every live track (into the summary) and drop the state."""
        for source_id, state in self._sources.items():
            for track_id in list(state.tracks):
                self._finish(state, source_id, track_id, "end_of_stream")

    def summary(self) -> dict[str, Any]:
        """Per source: every vehicle's final speed (``vehicles``, the ``vehicle_speed_final``
        records) and counts (``totals``)."""
        sources = {}
        for source_id, state in self._sources.items():
            totals = dict(state.totals)
            totals["calibration_suspect_events"] += state.alarm.events
            totals["live_tracks"] = len(state.tracks)
            sources[source_id] = {"vehicles": list(state.vehicles), "totals": totals}
        calibration = self._calibration
        return {
            "calibration": None if calibration is None else calibration.camera,
            "window_s": self.window_s,
            "speed_error_kmh": self.speed_error_kmh,
            "first_speed_error_kmh": self.first_speed_error_kmh,
            "box_noise_px": self.box_noise_px,
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
            state = _SourceState(
                {}, self._new_alarm(), deque(maxlen=_MAX_VEHICLES), dict.fromkeys(_TOTALS, 0)
            )
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
        if state.pending:  # finals of the previous stream of this source
            frame.events.extend(state.pending)
            state.pending.clear()
        detections = frame.layer(self.layer)
        n = len(detections)
        speed_kmh = np.full(n, np.nan)
        world = np.full((n, 2), np.nan)
        if n:
            if detections.tracker_id is None:
                raise StageError(
                    f"speed: layer '{self.layer}' has no tracker ids; put a track stage before speed"
                )
            xyxy = np.asarray(detections.xyxy, dtype=np.float64)
            anchors = box_anchors(xyxy, self.anchor)
            inside = calibration.in_zone(anchors)
            touches = self._touches(xyxy, frame.width, frame.height)
            cut = (touches & self._anchor_sides).any(axis=1)
            usable = inside & ~cut
            if usable.any():
                world[usable] = calibration.image_to_world(anchors[usable])
                usable &= np.isfinite(world).all(axis=1)
            cov = self._covariances(calibration, anchors, usable)
            widths = self._widths(calibration, xyxy, usable & ~touches[:, [0, 2, 3]].any(axis=1))
            track_ids = np.asarray(detections.tracker_id)
            names = detections.data.get("class_name")
            for i in np.flatnonzero(track_ids != NO_TRACK_ID).tolist():
                track_id = int(track_ids[i])
                if usable[i]:
                    name = "" if names is None else str(names[i])
                    speed_kmh[i] = self._observe(
                        state, frame, track_id, world[i], cov[i], xyxy[i], float(widths[i]), name
                    )
                elif not inside[i] and not cut[i]:
                    self._outside(state, frame, track_id)
        detections.data["speed_kmh"] = speed_kmh
        detections.data["world_xy_m"] = world
        frame.layers[self.layer] = detections
        if frame.pts_ns >= state.next_sweep_ns:
            self._sweep(state, frame)
        if self._frame_counts.get(frame.source_id) == frame.index + 1:
            for track_id in list(state.tracks):  # the file's last frame: nothing comes after it
                frame.events.extend(self._finish(state, frame.source_id, track_id, "last_frame"))

    def _covariances(self, calibration: Calibration, anchors: np.ndarray, usable: np.ndarray) -> np.ndarray:
        cov = np.full((len(anchors), 2, 2), np.nan)
        if usable.any():
            jacobian = homography_jacobian(calibration.homography, anchors[usable])
            pixel_cov = self._anchor_cov_px * self.box_noise_px**2
            cov[usable] = jacobian @ pixel_cov @ np.swapaxes(jacobian, 1, 2)
        return cov

    def _touches(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        """``(n, 4)``: which sides (x1, y1, x2, y2) of each box the image border may have cut."""
        margin = self.border_margin_px
        return np.column_stack(
            [
                xyxy[:, 0] <= margin,
                xyxy[:, 1] <= margin,
                xyxy[:, 2] >= width - margin,
                xyxy[:, 3] >= height - margin,
            ]
        )

    @staticmethod
    def _widths(calibration: Calibration, xyxy: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """Each usable box's bottom edge on the road plane (m), for the camera-shift alarm."""
        widths = np.full(len(xyxy), np.nan)
        if usable.any():
            boxes = xyxy[usable]
            left = calibration.image_to_world(boxes[:, [0, 3]])
            right = calibration.image_to_world(boxes[:, [2, 3]])
            widths[usable] = np.hypot(*(right - left).T)
        return widths

    def _observe(
        self,
        state: _SourceState,
        frame: Frame,
        track_id: int,
        xy_m: np.ndarray,
        cov_m2: np.ndarray,
        box_xyxy: np.ndarray,
        width_m: float,
        class_name: str,
    ) -> float:
        """Add one in-zone observation of a track; return its current speed (km/h or NaN)."""
        pts_ns = frame.pts_ns
        box_top_px, box_h = float(box_xyxy[1]), float(box_xyxy[3] - box_xyxy[1])
        track = state.tracks.get(track_id)
        if track is not None and pts_ns - track.last_seen_ns > self.forget_after_s * 1e9:
            frame.events.extend(self._finish(state, frame.source_id, track_id, "track_lost"))
            track = None
        if track is None:
            track = _Track()
            state.tracks[track_id] = track
            state.totals["tracks"] += 1
        if pts_ns <= track.last_seen_ns and track.path is not None:
            return math.nan  # a timestamp that does not advance gives no time base
        track.last_seen_ns = pts_ns
        track.out_since_ns = None
        if class_name:
            track.class_name = class_name
        path = track.path
        if path is None:
            path = track.path = VehiclePath(pts_ns)
            track.segment += 1
        elif self._occluded_below(track, path, pts_ns, box_top_px, box_h):
            state.totals["occluded"] += 1
            return math.nan
        else:
            sigmas = path.gate_sigmas(
                pts_ns,
                xy_m,
                cov_m2,
                max_acceleration_ms2=self.max_acceleration_ms2,
                max_speed_ms=self.max_speed_kmh / 3.6,
            )
            ratio = box_h / track.last_box_h if track.last_box_h > 0 else 1.0
            resized = max(ratio, 1.0 / max(ratio, 1e-9)) > self.max_box_change
            if sigmas > self.gate_sigmas or resized:
                jump = float(np.hypot(*(xy_m - path.xy_m[-1])))
                reason = "box_size" if resized and sigmas <= self.gate_sigmas else "position"
                held = _Held(pts_ns, xy_m.copy(), cov_m2.copy(), box_top_px, box_h, width_m, reason, jump)
                track.held.append(held)
                if len(track.held) >= self.split_after_points:
                    self._split(state, frame, track_id, track)
                return math.nan
            if track.held:
                state.totals["outliers"] += len(track.held)
                track.held.clear()
        path.add(pts_ns, xy_m, cov_m2, width_m)
        track.last_box_top_px, track.last_box_h, track.last_box_ns = box_top_px, box_h, pts_ns
        track.occluded_since_ns = None
        return self._current(state, path)

    def _occluded_below(
        self, track: _Track, path: VehiclePath, pts_ns: int, box_top_px: float, box_h: float
    ) -> bool:
        """Whether a box has lost its lower part (a vehicle in front hides the wheels): its
        top is where the last box's top has moved with the path's motion, within
        ``_OCCLUSION_SHARE`` of the box height, while its height shrank by more than that
        share and six noise sigmas; for at most ``_MAX_OCCLUSION_S``. Its anchor is off the
        road however well it fits the path; another vehicle taking the track over moves the
        top too. Such a box's top is the reference for the next box's."""
        full_h = track.last_box_h  # of the last box used: before the occlusion
        if not full_h > 0 or full_h - box_h <= max(_OCCLUSION_SHARE * full_h, 6.0 * self.box_noise_px):
            return False
        moved_px = 0.0
        if path.fit is not None and self._calibration is not None:
            then_s, now_s = ((ns - path.origin_ns) / 1e9 for ns in (track.last_box_ns, pts_ns))
            positions = np.array([path.fit.position_at(then_s), path.fit.position_at(now_s)])
            image_y = self._calibration.world_to_image(positions)[:, 1]
            moved_px = float(image_y[1] - image_y[0]) if np.isfinite(image_y).all() else 0.0
        if abs(box_top_px - (track.last_box_top_px + moved_px)) > _OCCLUSION_SHARE * full_h:
            return False
        if track.occluded_since_ns is None:
            track.occluded_since_ns = pts_ns
        elif pts_ns - track.occluded_since_ns > _MAX_OCCLUSION_S * 1e9:
            return False
        track.last_box_top_px, track.last_box_ns = box_top_px, pts_ns
        return True

    def _current(self, state: _SourceState, path: VehiclePath) -> float:
        fit = path.current(
            window_s=self.window_s,
            target_ms=self.speed_error_kmh / 3.6,
            limit_ms=self.first_speed_error_kmh / 3.6,
            min_span_s=self.min_window_s,
            min_points=_MIN_WINDOW_POINTS,
            acceleration_window_s=2.0 * self.window_s,
        )
        if fit is None:
            return math.nan
        velocity = fit.velocity_ms + path.lag_correction_ms
        speed = 3.6 * math.hypot(velocity[0], velocity[1])
        if speed > self.max_speed_kmh:
            state.totals["rejected_max_speed"] += 1
            return math.nan
        path.shown += 1
        path.max_shown_kmh = speed if not path.max_shown_kmh >= speed else path.max_shown_kmh
        return speed

    def _split(self, state: _SourceState, frame: Frame, track_id: int, track: _Track) -> None:
        """The held-back positions are another vehicle: close the path, start one from them."""
        held, track.held = track.held, []
        state.totals["identity_splits"] += 1
        event = {
            "type": SPLIT_EVENT,
            "track_id": track_id,
            "layer": self.layer,
            "pts_ns": held[0].pts_ns,
            "reason": held[0].reason,
            "jump_m": round(held[0].jump_m, 2),
            "segment": track.segment + 1,
        }
        frame.events.extend(self._close_path(state, frame.source_id, track_id, track, "identity_split"))
        frame.events.append(event)
        logger.debug("speed: %s track %d: identity split (%s)", frame.source_id, track_id, event["reason"])
        path = track.path = VehiclePath(held[0].pts_ns)
        track.segment += 1
        for item in held:
            path.add(item.pts_ns, item.xy_m, item.cov_m2, item.width_m)
        track.last_box_top_px, track.last_box_h = held[-1].box_top_px, held[-1].box_h
        track.last_box_ns = held[-1].pts_ns

    def _outside(self, state: _SourceState, frame: Frame, track_id: int) -> None:
        """A tracked box outside the zone: the vehicle leaves once it stays out ``exit_after_s``."""
        track = state.tracks.get(track_id)
        if track is None or track.path is None:
            return
        if track.out_since_ns is None:
            track.out_since_ns = frame.pts_ns
        if frame.pts_ns - track.out_since_ns >= self.exit_after_s * 1e9:
            frame.events.extend(self._close_path(state, frame.source_id, track_id, track, "left_zone"))

    def _sweep(self, state: _SourceState, frame: Frame) -> None:
        forget_ns = round(self.forget_after_s * 1e9)
        now_ns = frame.pts_ns
        for track_id in [t for t, track in state.tracks.items() if now_ns - track.last_seen_ns > forget_ns]:
            frame.events.extend(self._finish(state, frame.source_id, track_id, "track_lost"))
        state.next_sweep_ns = now_ns + forget_ns // 4

    def _finish(
        self, state: _SourceState, source_id: str, track_id: int, reason: str
    ) -> list[dict[str, Any]]:
        """Close a track's path and forget the track; return its events."""
        track = state.tracks.pop(track_id)
        if track.held:
            state.totals["outliers"] += len(track.held)
        return self._close_path(state, source_id, track_id, track, reason)

    def _close_path(
        self, state: _SourceState, source_id: str, track_id: int, track: _Track, reason: str
    ) -> list[dict[str, Any]]:
        """Issue the final speed of a track's current path; return the events (may be none)."""
        path, track.path = track.path, None
        if path is None:
            return []
        fit = path.whole() if path.count >= self.min_final_points else None
        if fit is None:
            state.totals["too_short"] += 1
            return []
        speed = 3.6 * fit.speed_ms
        if speed > self.max_speed_kmh:
            state.totals["rejected_max_speed"] += 1
            return []
        half = 3.6 * Z95 * fit.stderr_ms
        max_speed = path.max_shown_kmh if path.shown else speed
        final = {
            "type": FINAL_EVENT,
            "track_id": track_id,
            "class_name": track.class_name,
            "speed_kmh": round(speed, 2),
            "speed_ci95_kmh": [round(max(speed - half, 0.0), 2), round(speed + half, 2)],
            "max_speed_kmh": round(max(max_speed, speed), 2),
            "entry_pts_ns": int(path.origin_ns),
            "exit_pts_ns": int(path.last_ns),
            "points": int(path.count),
            "layer": self.layer,
            "segment": track.segment,
            "reason": reason,
        }
        state.vehicles.append(final)
        state.totals["vehicles"] += 1
        events = [final]
        alarm = None
        if self.shift_statistic in ("width", "profile"):
            ratio = path.far_near_width_ratio() if self.shift_statistic == "width" else path.far_near_ratio()
            if ratio is not None and ratio > 0:
                alarm = state.alarm.add(math.log(ratio))
        else:
            alarm = state.alarm.add(speed)
        if alarm is not None:
            alarm.update(source_id=source_id, track_id=track_id, pts_ns=int(path.last_ns))
            events.append(alarm)
            logger.warning(
                "speed: %s: measured speeds departed from the baseline (%s %.4g): has the camera moved?",
                source_id,
                alarm["statistic"],
                alarm["value"],
            )
        return events
