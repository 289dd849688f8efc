"""Camera-shift alarm: a running distribution of per-vehicle samples against a baseline.

A camera that moves, tilts or zooms silently distorts every speed its calibration gives. Per
source, each vehicle whose final speed is issued contributes one sample. The first
``baseline_size`` samples form a baseline; afterwards the last ``window_size`` samples are
compared with it:

- ``width`` (the default): the sample is ``log(w_far / w_near)``, the vehicle's width across
  the road (its box's bottom edge mapped onto the road plane) over the far half of its path
  against the near half (:meth:`plugins.speed_fit.VehiclePath.far_near_width_ratio`). Under
  a right calibration it is steady for vehicles of a kind and lane (perspective and the side
  of the vehicle in view keep it below 0, the same every day); a moved camera maps the far
  image rows to the wrong distance, which changes their metres per pixel across the road
  more than the near rows'. Nothing the traffic does moves it: a width does not depend on
  speed. An excursion while the two-sample Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``) gives a p-value below ``threshold`` (default 0.001) *and* the
  medians differ by more than ``WIDTH_MIN_SHIFT`` (2.5 %), so a significant but harmless
  difference on thousands of vehicles does not ring. Measured on the synthetic highway
  (``tests/sources/test_synthetic_traffic.py``, dense car-following traffic, 1 px box
  jitter): a 1° tilt moves the median by 0.045-0.05 against a spread of 0.02 per vehicle
  and is flagged within 25 vehicles; steady scenes raise nothing.
- ``profile``: the sample is ``log(v_far / v_near)``, the vehicle's speed over the far half
  of its path against the near half (:meth:`plugins.speed_fit.VehiclePath.far_near_ratio`),
  with the same test and ``PROFILE_MIN_SHIFT`` (5 %). A moved camera stretches far road more
  than near road, for every vehicle alike, but on a road seen in one direction of travel the
  far half is also the earlier (or later) half, so traffic that brakes or speeds up in view
  moves it as a tilt does: on dense car-following traffic two steady synthetic scenes of
  three raised a false alarm. Kept for views where boxes' widths are unreliable.
- ``median_ratio``: the sample is the final speed; an excursion while the ratio of the
  recent and baseline medians is outside [1/t, t], t = ``threshold`` (default 1.25).
  Traffic itself changes this (congestion, rush hour).
- ``ks``: the final speed, compared with ``scipy.stats.ks_2samp`` (p below ``threshold``,
  default 0.001). Also moved by traffic.
- ``off``: no alarm.

Entering an excursion returns one ``{"type": "calibration_suspect", ...}`` event; leaving
it is logged; a new excursion gives a new event. Traffic itself changes (congestion, rush
hour), so treat the alarm as a prompt to look at the calibration grid, not as proof.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

ShiftStatistic = Literal["width", "profile", "median_ratio", "ks", "off"]
#: Default threshold of each statistic.
DEFAULT_SHIFT_THRESHOLD: dict[str, float] = {
    "width": 0.001,
    "profile": 0.001,
    "median_ratio": 1.25,
    "ks": 0.001,
    "off": 0.0,
}
#: Smallest change of the median far/near log-ratio of speeds that ``profile`` reports (about 5 %).
PROFILE_MIN_SHIFT = 0.05
#: Smallest change of the median far/near log-ratio of widths that ``width`` reports (about
#: 2.5 %; a 1° tilt of the synthetic highway's camera moves it by 4.5-5 %).
WIDTH_MIN_SHIFT = 0.025
#: Statistics whose samples are far/near log-ratios, and the smallest median change each reports.
_MIN_SHIFT = {"profile": PROFILE_MIN_SHIFT, "width": WIDTH_MIN_SHIFT}


@dataclass
class ShiftAlarm:
    """Per-source running comparison of track speeds against a baseline (module docstring).

    Attributes:
        statistic: ``width``, ``profile``, ``median_ratio``, ``ks`` or ``off``.
        threshold: Ratio (> 1) or p-value (0..1) at which an excursion starts.
        baseline_size: Samples that form the baseline.
        window_size: Recent samples compared with it.
        suspect: True during an excursion.
        events: Excursions so far.
    """

    statistic: str
    threshold: float
    baseline_size: int
    window_size: int
    baseline: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    suspect: bool = False
    events: int = 0

    def add(self, sample: float) -> dict[str, Any] | None:
        """Add one vehicle's sample (module docstring); return an event when an excursion starts."""
        if self.statistic == "off":
            return None
        if len(self.baseline) < self.baseline_size:
            self.baseline.append(sample)
            return None
        self.recent.append(sample)
        while len(self.recent) > self.window_size:
            self.recent.popleft()
        if len(self.recent) < self.window_size:
            return None
        baseline, recent = np.asarray(self.baseline), np.asarray(self.recent)
        if self.statistic == "median_ratio":
            value = float(np.median(recent) / max(np.median(baseline), 1e-9))
            departed = max(value, 1.0 / max(value, 1e-9)) > self.threshold
        else:
            value = float(stats.ks_2samp(baseline, recent).pvalue)
            departed = value < self.threshold
            if self.statistic in _MIN_SHIFT:
                departed &= abs(float(np.median(recent) - np.median(baseline))) > _MIN_SHIFT[self.statistic]
        if departed and not self.suspect:
            self.suspect, self.events = True, self.events + 1
            return {
                "type": "calibration_suspect",
                "statistic": self.statistic,
                "value": round(value, 6),
                "threshold": self.threshold,
                **self._medians(baseline, recent),
                "baseline_tracks": len(baseline),
                "recent_tracks": len(recent),
            }
        if not departed and self.suspect:
            self.suspect = False
            logger.info(
                "speed: measured speeds are back near the baseline (%s = %.4g)", self.statistic, value
            )
        return None

    def _medians(self, baseline: np.ndarray, recent: np.ndarray) -> dict[str, float]:
        if self.statistic in _MIN_SHIFT:  # samples are log ratios: report the ratios
            return {
                "baseline_median_far_near": round(float(np.exp(np.median(baseline))), 4),
                "recent_median_far_near": round(float(np.exp(np.median(recent))), 4),
            }
        return {
            "baseline_median_kmh": round(float(np.median(baseline)), 2),
            "recent_median_kmh": round(float(np.median(recent)), 2),
        }
