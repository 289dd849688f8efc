"""Camera-shift alarm: a running distribution of measured speeds against a baseline.

A camera that moves, tilts or zooms silently scales every speed its calibration gives. Per
source, each vehicle contributes one sample (its final speed). The first ``baseline_size`` samples form a baseline; afterwards the last
``window_size`` samples are compared with it:

- ``median_ratio``: the ratio of the medians; an excursion while it is outside
  [1/t, t], t = ``threshold`` (default 1.25);
- ``ks``: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``); an excursion
  while its p-value is below ``threshold`` (default 0.001);
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

ShiftStatistic = Literal["median_ratio", "ks", "off"]
#: Default threshold of each statistic.
DEFAULT_SHIFT_THRESHOLD: dict[str, float] = {"median_ratio": 1.25, "ks": 0.001, "off": 0.0}


@dataclass
class ShiftAlarm:
    """Per-source running comparison of track speeds against a baseline (module docstring).

    Attributes:
        statistic: ``median_ratio``, ``ks`` or ``off``.
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

    def add(self, speed_kmh: float) -> dict[str, Any] | None:
        """Add one vehicle's speed; return an event when an excursion starts."""
        if self.statistic == "off":
            return None
        if len(self.baseline) < self.baseline_size:
            self.baseline.append(speed_kmh)
            return None
        self.recent.append(speed_kmh)
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
        if departed and not self.suspect:
            self.suspect, self.events = True, self.events + 1
            return {
                "type": "calibration_suspect",
                "statistic": self.statistic,
                "value": round(value, 6),
                "threshold": self.threshold,
                "baseline_median_kmh": round(float(np.median(baseline)), 2),
                "recent_median_kmh": round(float(np.median(recent)), 2),
                "baseline_tracks": len(baseline),
                "recent_tracks": len(recent),
            }
        if not departed and self.suspect:
            self.suspect = False
            logger.info(
                "speed: measured speeds are back near the baseline (%s = %.4g)", self.statistic, value
            )
        return None
