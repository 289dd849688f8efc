"""Camera-shift alarm: a running distribution of per-vehicle samples against a baseline.

A camera that moves, tilts or zooms silently distorts every speed its calibration gives. Per
source, each vehicle whose final speed is issued contributes one sample. The first
``baseline_size`` samples form a baseline; afterwards the last ``window_size`` samples are
compared with it:

- ``profile`` (the default): the sample is ``log(v_far / v_near)``, the vehicle's speed over
  the far half of its path against the near half (:meth:`plugins.speed_fit.VehiclePath.far_near_ratio`).
  A right calibration gives 0 whatever the traffic does; a moved camera stretches far road
  more than near road, for every vehicle alike. An excursion while the two-sample
  Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) gives a p-value below ``threshold``
  (default 0.001) *and* the medians differ by more than ``PROFILE_MIN_SHIFT`` (5 %), so a
  significant but harmless difference on thousands of vehicles does not ring.
  Measured on the synthetic highway (``tests/sources/test_synthetic_traffic.py``): a 1°
  tilt is flagged within 14-21 vehicles after the bump (window 15); steady scenes raise nothing.
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

ShiftStatistic = Literal["profile", "median_ratio", "ks", "off"]
#: Default threshold of each statistic.
DEFAULT_SHIFT_THRESHOLD: dict[str, float] = {"profile": 0.001, "median_ratio": 1.25, "ks": 0.001, "off": 0.0}
#: Smallest change of the median far/near log-ratio that ``profile`` reports (about 5 %).
PROFILE_MIN_SHIFT = 0.05


@dataclass
class ShiftAlarm:
    """Per-source running comparison of track speeds against a baseline (module docstring).

    Attributes:
        statistic: ``profile``, ``median_ratio``, ``ks`` or ``off``.
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
            if self.statistic == "profile":
                departed &= abs(float(np.median(recent) - np.median(baseline))) > PROFILE_MIN_SHIFT
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
        if self.statistic == "profile":  # samples are log ratios: report the ratios
            return {
                "baseline_median_far_near": round(float(np.exp(np.median(baseline))), 4),
                "recent_median_far_near": round(float(np.exp(np.median(recent))), 4),
            }
        return {
            "baseline_median_kmh": round(float(np.median(baseline)), 2),
            "recent_median_kmh": round(float(np.median(recent)), 2),
        }
