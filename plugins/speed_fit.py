"""One vehicle's motion for the speed stage: its in-zone positions, a weighted robust line
fit of position against time, and the identity gate.

Convention:
    - Times are float64 seconds relative to the path's first observation; positions are
      road-plane metres. Every observation carries the 2×2 covariance (m²) of its position:
      the box noise in pixels mapped through the calibration's Jacobian at the anchor, so a
      far vehicle, whose pixels are worth tens of centimetres, weighs less than a near one.
    - A fit is a straight line ``p(t) = p0 + v (t - t0)`` over some of the observations,
      weighted by the inverse position variance along the direction of motion. Two
      reweighting passes with Huber weights (``HUBER_K`` noise sigmas) take the pull of a
      few bad boxes away. The noise scale is the residuals' robust scale (1.4826 × MAD),
      never below the noise model's: the standard error of the speed comes from it.

Why a line fit: for a vehicle at constant speed it is the minimum-variance estimate from
the positions (the slope's variance is ``σ² / Σ (t - t̄)²``, falling with the cube of the
time spanned), unlike differences of two positions a fixed number of frames apart, which use
two points of each window and need a fixed count of frames whatever the frame rate. Its error
is known before it is computed, so the stage can show a speed as soon as the path is long
enough for the error budget, and no sooner. Theil–Sen would be more robust but costs O(n²)
per frame; the gate below already keeps another vehicle's boxes out of the path.

Why the lag is part of the error: a line gives the speed at its points' mean time, behind
the vehicle's speed now when it accelerates. Measured with ``benchmarks/speed_accuracy.py``
(hd, 2 px, a third of the vehicles accelerating or braking at 1-3 m/s²): with windows sized
on noise alone, 80 % of the shown speeds beyond the p95 were on vehicles accelerating at that
frame, 86 % of those behind the true speed (mean -1.9 km/h), with a median lag of 0.33 s
(windows of 0.8 s); p95 2.67 / 2.61 / 2.28 km/h at 25 / 30 / 60 fps. Correcting the lag
with a quadratic's acceleration only beyond 5 standard errors came too late (2.59 km/h at
best); a quadratic evaluated at the last point needs 2.5x longer windows for its 4x larger
noise and is biased where an acceleration ends (2.8 km/h); loosening the budget only traded
lag for noise (2.5-2.6 km/h). What works: the acceleration (a quadratic over the last
``2 * window_s``) shrunk by its own uncertainty corrects the lag, what stays uncertain of it
times the lag is part of each stretch's predicted error (:func:`choose_window`), and when no
stretch reaches the target the one of least predicted error is used: p95 2.1 / 2.3 /
1.8 km/h, constant speeds 1.5 / 1.5 / 1.4 km/h (1.6 before), coverage and first-speed delay
unchanged. Without the correction (windows only shortened) p95 was 1.7 km/h but a vehicle
braking at 6 m/s² got no speed at all (its lag alone exceeded the budget); with the
correction but its uncertainty left out of the budget, speeds 12 km/h off appeared. A
vehicle's first speed keeps the noise-only budget (uncorrected) when the full one is not
met yet: counting the lag there too cut the tracks with a speed on the motorway video from
21 to 18 of 23. On the real videos, whose boxes show apparent accelerations (the box's
bottom edge is not the wheel's contact point), 31 % / 23 % of in-zone sightings carry a
speed (36 % / 32 % before): a speed whose lag the estimator cannot vouch for is not shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

#: Two-sided 95 % quantile of the normal distribution.
Z95 = 1.959963984540054
#: Huber threshold in noise sigmas for the reweighting passes.
HUBER_K = 2.5
# The residual scale is only trusted from this many points on (before: the noise model).
_MIN_POINTS_FOR_SCALE = 8
#: Shrinkage of the fitted acceleration (see :meth:`VehiclePath.expected_acceleration`): an
#: acceleration of ``sqrt(ACCELERATION_SHRINK)`` standard errors counts for half.
ACCELERATION_SHRINK = 2.0
# The acceleration is fitted from this many points spanning this long on (before: 0).
_ACCELERATION_MIN_POINTS = 12
_ACCELERATION_MIN_SPAN_S = 0.4
# Above this many points, the older half of a path is thinned (every other point kept).
_MAX_POINTS = 4096


@dataclass(frozen=True)
class LineFit:
    """A line fitted to a path's positions (see the module convention).

    Attributes:
        t0_s: Weighted mean time of the points.
        xy0_m: ``(2,)`` fitted position at ``t0_s``.
        velocity_ms: ``(2,)`` fitted velocity.
        stderr_ms: Standard error of the speed (along the direction of motion).
        position_var_m2: Variance of the fitted position at ``t0_s`` along the motion.
        scale: Residual scale relative to the noise model (>= 1).
        points: Number of observations fitted.
        first_s: Time of the first of them.
        last_s: Time of the last of them.
    """

    t0_s: float
    xy0_m: np.ndarray
    velocity_ms: np.ndarray
    stderr_ms: float
    position_var_m2: float
    scale: float
    points: int
    first_s: float
    last_s: float

    @property
    def speed_ms(self) -> float:
        """Norm of the fitted velocity."""
        return float(math.hypot(self.velocity_ms[0], self.velocity_ms[1]))

    @property
    def direction(self) -> np.ndarray:
        """Unit vector of the motion ((0, 1) for a vehicle that does not move)."""
        speed = self.speed_ms
        return self.velocity_ms / speed if speed > 1e-6 else np.array([0.0, 1.0])

    def position_at(self, t_s: float) -> np.ndarray:
        """Predicted position at ``t_s``."""
        return self.xy0_m + self.velocity_ms * (t_s - self.t0_s)


def along_variance(cov_m2: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Variance of each ``(n, 2, 2)`` covariance along a unit ``direction``."""
    return np.einsum("i,nij,j->n", direction, cov_m2, direction)


def fit_line(t_s: np.ndarray, xy_m: np.ndarray, cov_m2: np.ndarray, direction: np.ndarray) -> LineFit | None:
    """Weighted robust line fit of ``(n, 2)`` positions against ``(n,)`` times.

    Args:
        t_s: Observation times.
        xy_m: Positions.
        cov_m2: ``(n, 2, 2)`` position covariances.
        direction: Unit vector of the motion, to weigh by the variance along it (the
            direction is refined from the fit itself).

    Returns:
        The fit, or None with fewer than 2 points or no time between them.
    """
    n = len(t_s)
    if n < 2 or t_s[-1] - t_s[0] <= 0:
        return None
    var = np.maximum(along_variance(cov_m2, direction), 1e-12)
    base = 1.0 / var
    weights = base
    scale = 1.0
    for iteration in range(3):
        sw = weights.sum()
        t0 = float(weights @ t_s / sw)
        xy0 = weights @ xy_m / sw
        dt = t_s - t0
        stt = float(weights @ (dt * dt))
        if stt <= 0:
            return None
        velocity = (weights * dt) @ (xy_m - xy0) / stt
        speed = math.hypot(velocity[0], velocity[1])
        unit = velocity / speed if speed > 1e-6 else direction
        if iteration == 0 and not np.allclose(unit, direction):
            var = np.maximum(along_variance(cov_m2, unit), 1e-12)
            base = 1.0 / var
        residual = ((xy_m - xy0) - dt[:, None] * velocity) @ unit
        normalized = np.abs(residual) * np.sqrt(base)
        if n >= _MIN_POINTS_FOR_SCALE:
            scale = max(1.0, 1.4826 * float(np.median(normalized)))
        if iteration < 2:
            weights = base * np.minimum(1.0, HUBER_K * scale / np.maximum(normalized, 1e-12))
    return LineFit(
        t0_s=t0,
        xy0_m=np.asarray(xy0, dtype=np.float64),
        velocity_ms=np.asarray(velocity, dtype=np.float64),
        stderr_ms=scale / math.sqrt(stt),
        position_var_m2=scale * scale / sw,
        scale=scale,
        points=n,
        first_s=float(t_s[0]),
        last_s=float(t_s[-1]),
    )


def choose_window(
    t_s: np.ndarray,
    var_m2: np.ndarray,
    *,
    scale: float,
    acceleration_ms2: float,
    target_ms: float,
    limit_ms: float,
    min_span_s: float,
    min_points: int,
) -> int | None:
    """Start index of the recent stretch whose line fit best gives the speed at the last point.

    A line through the points ``j..n-1`` gives the speed at their weighted mean time ``t̄``,
    ``lag = t_last - t̄`` before the last point, with a predicted 95 % noise half-width of
    ``Z95 * scale / sqrt(Σ w (t - t̄)²)`` (``w = 1 / var``): a longer stretch has less noise and
    more lag. The predicted error of stretch ``j`` is its noise's half-width plus the bias
    ``|acceleration| * lag``; both are computed for every ``j`` at once from running sums taken from the end.

    The stretch is the shortest whose predicted error is within ``target_ms`` (the most
    responsive one that is precise enough), else, when none is, the one of least predicted
    error, if that is within ``limit_ms``.

    Args:
        t_s: ``(n,)`` observation times, increasing.
        var_m2: ``(n,)`` position variances along the motion.
        scale: Noise scale relative to the model.
        acceleration_ms2: Expected magnitude of the acceleration along the motion (0 for a
            vehicle whose acceleration is not known to differ from 0).
        target_ms: Predicted 95 % error that ends the search for a short stretch.
        limit_ms: Largest predicted 95 % error a speed may have.
        min_span_s: Shortest time a stretch may span.
        min_points: Fewest points a stretch may hold.

    Returns:
        The start index, or None when no stretch is within ``limit_ms``.
    """
    n = len(t_s)
    if n < max(min_points, 2):
        return None
    w = 1.0 / np.maximum(var_m2[::-1], 1e-12)
    t = (t_s - t_s[-1])[::-1]  # from the newest point backwards, times <= 0
    sw = np.cumsum(w)
    swt = np.cumsum(w * t)
    swtt = np.cumsum(w * t * t)
    stt = np.maximum(swtt - swt * swt / sw, 0.0)
    with np.errstate(divide="ignore"):
        # The bias adds to the noise's half-width: a bound (the 95 % quantile of |bias + noise|
        # is at most that), which measured better than the quantile itself (one vehicle more
        # of 72 covered at 25 fps, p95 1.7 against 1.9 km/h).
        error = Z95 * scale / np.sqrt(stt) + abs(acceleration_ms2) * (-swt / sw)
    valid = (np.arange(1, n + 1) >= min_points) & (-t >= min_span_s)
    error = np.where(valid, error, np.inf)
    within = error <= target_ms
    if within.any():
        return n - 1 - int(np.argmax(within))
    best = int(np.argmin(error))
    return n - 1 - best if error[best] <= limit_ms else None


@dataclass(frozen=True)
class MeanFit:
    """A vehicle's mean velocity over its whole path (constant-acceleration fit).

    Attributes:
        velocity_ms: ``(2,)`` mean velocity between the first and the last observation.
        stderr_ms: Its standard error along the motion (noise scale included).
        scale: Residual scale relative to the noise model (>= 1).
        points: Observations fitted.
        acceleration_ms2: ``(2,)`` fitted acceleration (zeros for the straight line).
        acceleration_stderr_ms2: Its standard error along the motion (inf for the line).
    """

    velocity_ms: np.ndarray
    stderr_ms: float
    scale: float
    points: int
    acceleration_ms2: np.ndarray = field(default_factory=lambda: np.zeros(2))
    acceleration_stderr_ms2: float = math.inf

    @property
    def speed_ms(self) -> float:
        """Norm of the mean velocity."""
        return float(math.hypot(self.velocity_ms[0], self.velocity_ms[1]))


def fit_mean_velocity(
    t_s: np.ndarray, xy_m: np.ndarray, cov_m2: np.ndarray, direction: np.ndarray
) -> MeanFit | None:
    """Mean velocity of a whole path: a robust weighted fit of ``p0 + v τ + a τ² / 2``,
    ``τ`` from the middle of the path's time span, whose ``v`` is exactly the mean velocity
    (displacement over time) between the first and the last observation when the
    acceleration is constant. A straight line would be pulled toward the speed near the
    camera, where positions are precise and weigh most, when the vehicle accelerates.

    Fewer than 6 points: the straight line (:func:`fit_line`).
    """
    n = len(t_s)
    if n < 6:
        line = fit_line(t_s, xy_m, cov_m2, direction)
        if line is None:
            return None
        return MeanFit(line.velocity_ms, line.stderr_ms, line.scale, line.points)
    tau = t_s - (t_s[0] + t_s[-1]) / 2.0
    design = np.column_stack([np.ones(n), tau, tau * tau])
    base = 1.0 / np.maximum(along_variance(cov_m2, direction), 1e-12)
    weights, scale = base, 1.0
    for iteration in range(3):
        normal = design.T @ (weights[:, None] * design)
        try:
            inverse = np.linalg.inv(normal)
        except np.linalg.LinAlgError:
            return None
        coefficients = inverse @ (design.T @ (weights[:, None] * xy_m))
        velocity = coefficients[1]
        speed = math.hypot(velocity[0], velocity[1])
        unit = velocity / speed if speed > 1e-6 else direction
        if iteration == 0:
            base = 1.0 / np.maximum(along_variance(cov_m2, unit), 1e-12)
        residual = (xy_m - design @ coefficients) @ unit
        normalized = np.abs(residual) * np.sqrt(base)
        if n >= _MIN_POINTS_FOR_SCALE:
            scale = max(1.0, 1.4826 * float(np.median(normalized)))
        if iteration < 2:
            weights = base * np.minimum(1.0, HUBER_K * scale / np.maximum(normalized, 1e-12))
    return MeanFit(
        velocity_ms=np.asarray(velocity, dtype=np.float64),
        stderr_ms=scale * math.sqrt(max(float(inverse[1, 1]), 0.0)),
        scale=scale,
        points=n,
        acceleration_ms2=2.0 * np.asarray(coefficients[2], dtype=np.float64),
        acceleration_stderr_ms2=2.0 * scale * math.sqrt(max(float(inverse[2, 2]), 0.0)),
    )


class VehiclePath:
    """The in-zone observations of one vehicle (one identity segment of a track).

    Attributes:
        origin_ns: Timestamp of the first observation (time 0 of the path).
        count: Observations held.
        fit: The latest current-speed fit (None until the budget is met).
        direction: Unit vector of the motion used for weighting.
        shown_kmh: Number of speeds shown and their maximum.
    """

    def __init__(self, origin_ns: int) -> None:
        self.origin_ns = origin_ns
        self.count = 0
        self._t_s = np.zeros(64)
        self._xy_m = np.zeros((64, 2))
        self._cov_m2 = np.zeros((64, 2, 2))
        self._width_m = np.full(64, np.nan)
        self.last_ns = origin_ns
        self.fit: LineFit | None = None
        self.lag_correction_ms = np.zeros(2)
        self.direction = np.array([0.0, 1.0])
        self.scale = 1.0
        self.shown = 0
        self.max_shown_kmh = math.nan

    @property
    def t_s(self) -> np.ndarray:
        """Observation times (s from ``origin_ns``)."""
        return self._t_s[: self.count]

    @property
    def xy_m(self) -> np.ndarray:
        """Observed positions."""
        return self._xy_m[: self.count]

    @property
    def cov_m2(self) -> np.ndarray:
        """Position covariances."""
        return self._cov_m2[: self.count]

    @property
    def width_m(self) -> np.ndarray:
        """Observed widths across the road (NaN where the box did not give one)."""
        return self._width_m[: self.count]

    def add(self, pts_ns: int, xy_m: np.ndarray, cov_m2: np.ndarray, width_m: float = math.nan) -> None:
        """Append one observation (timestamps must increase); ``width_m`` is the box's
        bottom edge on the road plane, for :meth:`far_near_width_ratio`."""
        if self.count == len(self._t_s):
            if self.count >= _MAX_POINTS:
                self._thin()
            else:
                grow = len(self._t_s)
                self._t_s = np.concatenate([self._t_s, np.zeros(grow)])
                self._xy_m = np.concatenate([self._xy_m, np.zeros((grow, 2))])
                self._cov_m2 = np.concatenate([self._cov_m2, np.zeros((grow, 2, 2))])
                self._width_m = np.concatenate([self._width_m, np.full(grow, np.nan)])
        i = self.count
        self._t_s[i] = (pts_ns - self.origin_ns) / 1e9
        self._xy_m[i] = xy_m
        self._cov_m2[i] = cov_m2
        self._width_m[i] = width_m
        self.count += 1
        self.last_ns = pts_ns
        if self.count >= 2:
            displacement = self._xy_m[i] - self._xy_m[0]
            norm = math.hypot(displacement[0], displacement[1])
            if self.fit is None and norm > 1e-6:
                self.direction = displacement / norm

    def _thin(self) -> None:
        # A vehicle stopped in the zone for minutes: keep the newer half whole, thin the older.
        half = self.count // 2
        keep = np.r_[np.arange(0, half, 2), np.arange(half, self.count)]
        kept = len(keep)
        self._t_s[:kept] = self._t_s[keep]
        self._xy_m[:kept] = self._xy_m[keep]
        self._cov_m2[:kept] = self._cov_m2[keep]
        self._width_m[:kept] = self._width_m[keep]
        self.count = kept

    def current(
        self,
        *,
        window_s: float,
        target_ms: float,
        limit_ms: float,
        min_span_s: float,
        min_points: int,
        acceleration_window_s: float,
    ) -> LineFit | None:
        """Fit the recent stretch (within ``window_s``) that :func:`choose_window` picks,
        with the acceleration :meth:`expected_acceleration` finds over ``acceleration_window_s``."""
        t = self.t_s
        begin = int(np.searchsorted(t, t[-1] - window_s - 1e-9)) if self.count else 0
        t, cov = t[begin:], self.cov_m2[begin:]
        acceleration, uncertainty = self.expected_acceleration(acceleration_window_s)
        variance = along_variance(cov, self.direction)
        pick = partial(
            choose_window,
            t,
            variance,
            scale=self.scale,
            target_ms=target_ms,
            limit_ms=limit_ms,
            min_span_s=min_span_s,
            min_points=min_points,
        )
        start = pick(acceleration_ms2=uncertainty)
        if start is None and self.shown == 0:
            # The first speed of a vehicle: its acceleration is barely known yet (a few
            # noisy points), so its budget is the noise alone and the line is not corrected,
            # as a speed always came before: no vehicle gets its first speed later than that.
            acceleration = np.zeros(2)
            start = pick(acceleration_ms2=0.0)
        if start is None:
            return None
        fit = fit_line(t[start:], self.xy_m[begin + start :], cov[start:], self.direction)
        if fit is None:
            return None
        if fit.points >= _MIN_POINTS_FOR_SCALE:
            self.scale = fit.scale
        if Z95 * fit.stderr_ms > limit_ms * 1.25:
            return None  # the residuals say the noise is larger than the model: wait for more
        self.fit = fit
        self.direction = fit.direction if fit.speed_ms > 0.5 else self.direction
        self.lag_correction_ms = acceleration * (fit.last_s - fit.t0_s)
        return fit

    def expected_acceleration(self, window_s: float) -> tuple[np.ndarray, float]:
        """The acceleration to correct a line's lag with, and the uncertainty left after it.

        A quadratic (:func:`fit_mean_velocity`) over the last ``window_s`` gives the
        acceleration ``â`` (along the motion) with its standard error ``σ``; ``a² =
        max(â² - σ², 0)`` estimates its square without the noise's share. The correction is
        ``â`` shrunk by the Wiener gain ``g = a² / (a² + k σ²)`` (``k`` =
        :data:`ACCELERATION_SHRINK`), so an acceleration of noise size is neither applied nor
        counted and a clear one is applied in full; what remains uncertain is the root mean
        square error of that shrunk estimate, ``sqrt(a² k σ² / (a² + k σ²))`` (at most
        ``|a|``, at most ``sqrt(k) σ``). Zeros and 0 before
        ``_ACCELERATION_MIN_POINTS`` points spanning ``_ACCELERATION_MIN_SPAN_S``.
        """
        t = self.t_s
        begin = int(np.searchsorted(t, t[-1] - window_s - 1e-9)) if self.count else 0
        if self.count - begin < _ACCELERATION_MIN_POINTS or t[-1] - t[begin] < _ACCELERATION_MIN_SPAN_S:
            return np.zeros(2), 0.0
        quad = fit_mean_velocity(t[begin:], self.xy_m[begin:], self.cov_m2[begin:], self.direction)
        if quad is None or not math.isfinite(quad.acceleration_stderr_ms2):
            return np.zeros(2), 0.0
        along = float(quad.acceleration_ms2 @ self.direction)
        variance = quad.acceleration_stderr_ms2**2
        # a² estimated without the noise's share (E[â²] = a² + σ²): an acceleration of noise
        # size is no acceleration, neither corrected nor counted.
        squared = max(along * along - variance, 0.0)
        noise = ACCELERATION_SHRINK * variance
        total = max(squared + noise, 1e-12)
        return quad.acceleration_ms2 * (squared / total), math.sqrt(squared * noise / total)

    def whole(self) -> MeanFit | None:
        """Fit every observation of the path: the vehicle's mean speed through the zone."""
        return fit_mean_velocity(self.t_s, self.xy_m, self.cov_m2, self.direction)

    def _halves(self) -> tuple[slice, slice] | None:
        """The path split in time at its middle, far half first: the far half is the one
        whose positions are noisier (a pixel is worth more there). None below 8 points."""
        if self.count < 8:
            return None
        middle = self.t_s[0] + (self.t_s[-1] - self.t_s[0]) / 2.0
        split = int(np.searchsorted(self.t_s, middle))
        first, second = slice(0, split), slice(split, self.count)
        variance = along_variance(self.cov_m2, self.direction)
        if len(variance[first]) == 0 or len(variance[second]) == 0:
            return None
        far_first = float(np.mean(variance[first])) >= float(np.mean(variance[second]))
        return (first, second) if far_first else (second, first)

    def far_near_ratio(self) -> float | None:
        """Speed over the far half of the path divided by the speed over its near half.

        Under a right calibration a vehicle's two halves agree when its speed is steady; a
        moved camera stretches the far part of the road more than the near part (the
        camera-shift alarm's ``profile`` statistic). A vehicle that brakes or speeds up in
        view moves it too. None for paths too short to halve (fewer than 8 points, or 4 per
        half).
        """
        halves = self._halves()
        if halves is None:
            return None
        speeds = []
        for part in halves:
            t, xy, cov = self.t_s[part], self.xy_m[part], self.cov_m2[part]
            fit = fit_line(t, xy, cov, self.direction) if len(t) >= 4 else None
            if fit is None or fit.speed_ms <= 0.5:
                return None
            speeds.append(fit.speed_ms)
        return speeds[0] / speeds[1]

    def far_near_width_ratio(self) -> float | None:
        """Median width across the road over the far half of the path divided by the near
        half's (the camera-shift alarm's ``width`` statistic).

        The width is the box's bottom edge mapped onto the road plane. Under a right
        calibration the ratio is the same for a vehicle of a kind and lane whatever it does
        (perspective and the side of the vehicle in view keep it off 1, steadily); a moved
        camera maps the far rows to the wrong distance, which changes their metres per pixel
        across the road more than the near rows'. Traffic (braking, speeding up) cannot move
        it. None without 4 widths in each half.
        """
        halves = self._halves()
        if halves is None:
            return None
        medians = []
        for part in halves:
            widths = self.width_m[part]
            widths = widths[np.isfinite(widths)]
            if len(widths) < 4:
                return None
            medians.append(float(np.median(widths)))
        far, near = medians
        return far / near if far > 0 and near > 0 else None

    def gate_sigmas(
        self,
        pts_ns: int,
        xy_m: np.ndarray,
        cov_m2: np.ndarray,
        *,
        max_acceleration_ms2: float,
        max_speed_ms: float,
    ) -> float:
        """How many noise sigmas a new position lies from this path's motion.

        With a fit, the prediction is its line; the uncertainty adds the fit's own, the
        observation's (scaled like the residuals) and the distance a vehicle accelerating at
        ``max_acceleration_ms2`` could depart from the line since the fit's mean time. Before
        the first fit, only a jump farther than ``max_speed_ms`` allows from the last
        position counts.
        """
        fit = self.fit
        t = (pts_ns - self.origin_ns) / 1e9
        if fit is None:
            if self.count == 0:
                return 0.0
            last = self.count - 1
            jump = math.hypot(*(np.asarray(xy_m) - self._xy_m[last]))
            noise = math.sqrt(float(np.trace(cov_m2) + np.trace(self._cov_m2[last])))
            excess = jump - max_speed_ms * max(t - self._t_s[last], 0.0)
            return max(excess, 0.0) / max(noise, 1e-9)
        lead = t - fit.t0_s
        spread = (
            fit.position_var_m2
            + (fit.stderr_ms * lead) ** 2
            + (0.5 * max_acceleration_ms2 * lead * lead) ** 2
        )
        total = fit.scale**2 * np.asarray(cov_m2) + spread * np.eye(2)
        error = np.asarray(xy_m) - fit.position_at(t)
        try:
            return float(math.sqrt(max(error @ np.linalg.solve(total, error), 0.0)))
        except np.linalg.LinAlgError:
            return math.inf
