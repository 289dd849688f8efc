"""The ``trackers`` XYXY Kalman filter with the same algebra and less work per call.

``ByteTrackTracker`` takes the state estimator class it builds its tracklets with
(``state_estimator_class``); this one is a drop-in for the default ``XYXYStateEstimator``.

Why not the library's own: with timestamps (how the ``track`` stage calls it) a frame step is
``elapsed * fps``, a float that lands near 1.0 but differs from frame to frame, so each
tracklet's one-entry matrix cache misses on every predict and rebuilds its transition matrix
(``np.eye`` and a Python loop) and copies its process noise. Its update inverts the 4x4
innovation covariance through ``np.linalg.inv``, whose Python wrapper costs more than the
inversion. Tracking was the main thread's largest cost in ``vistream run`` (about 60 % of that
thread's CPU time on the overpass video).

What changes, and what does not:

- The transition matrix ``F`` and process noise ``Q`` of a frame step are built once per
  step value by the library's own motion model and shared by every tracklet of the process
  that predicts with the same step and the same one-frame noise (one frame of one tracker:
  all its tracklets).
- The innovation covariance is inverted with OpenCV (``cv2.invert``, LU), a single C call.
- Products with the observation matrix ``H = [I | 0]`` are slices (the same values).
- Everything else is the library's algebra, in the same order: its own ``predict``
  (``x = F x``, ``P = F P F^T + Q``); the Joseph-form update. Predictions agree with the library's to
  floating-point rounding (``tests/plugins/test_track.py``).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
from numpy.typing import NDArray
from trackers.utils.state_representations import XYXYStateEstimator

# (frame step, frame rate, one-frame Q bytes) -> (F, Q). A frame's tracklets share one
# step; a few entries cover several sources predicting in turn.
_STEP_CACHE: dict[tuple[float, float | None, bytes], tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
_STEP_CACHE_SIZE = 64
_STEP_CACHE_LOCK = threading.Lock()  # misses only: several pipelines may share a process
_IDENTITY_8 = np.eye(8)


class CachedStepXYXYEstimator(XYXYStateEstimator):
    """``XYXYStateEstimator`` with shared per-step matrices and a one-call 4x4 inversion."""

    def predict(self, frame_step: float = 1.0, frame_rate: float | None = None) -> None:
        """Predict one Kalman step of ``frame_step`` frames (as the library does)."""
        self.kf.transition_mtx, self.kf.process_noise = self._step_matrices(frame_step, frame_rate)
        self.kf.predict()  # the library's own predict with the shared matrices

    def update(self, bbox: np.ndarray | None) -> None:
        """Correct the state with an observed box ``[x1, y1, x2, y2]`` (None: no observation)."""
        kf = self.kf
        if bbox is None:
            kf.update(None)
            return
        measurement = np.asarray(bbox, dtype=np.float64).reshape((4, 1))
        # The observation matrix is [I | 0]: the products with it are slices, with the
        # very same values (multiplying by 1 and adding zeros is exact).
        covariance = kf.state_covariance
        covariance_ht = covariance[:, :4]
        kf.innovation = measurement - kf.state[:4]
        kf.innovation_cov = covariance_ht[:4] + kf.measurement_noise
        _, inverse = cv2.invert(kf.innovation_cov, flags=cv2.DECOMP_LU)
        gain = covariance_ht @ inverse
        kf.kalman_gain = gain
        kf.state = kf.state + gain @ kf.innovation
        correction = _IDENTITY_8.copy()  # I - K H
        correction[:, :4] -= gain
        kf.state_covariance = correction @ covariance @ correction.T + gain @ kf.measurement_noise @ gain.T
        kf.state_post = kf.state
        kf.state_covariance_post = kf.state_covariance

    def _step_matrices(
        self, frame_step: float, frame_rate: float | None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        noise = self.motion.process_noise
        key = (frame_step, frame_rate, noise.baseline_Q.tobytes())
        found = _STEP_CACHE.get(key)
        if found is None:
            # The library's motion model builds them, so gap scaling (DWNA) stays its own.
            # They are shared, never changed in place (the library only reassigns them).
            self.motion.apply(self.kf, frame_step, frame_rate)
            found = (self.kf.transition_mtx, self.kf.process_noise)
            with _STEP_CACHE_LOCK:
                if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
                    _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
                _STEP_CACHE[key] = found
        return found
