"""Camera-shift alarm: a running distribution of measured speeds against a baseline.

A camera that moves, tilts or zooms silently scales every speed its calibration gives. Per
source, each track contributes one sample (its smoothed speed once its first smoothing window
is full). The first ``baseline_size`` samples form a baseline; afterwards the last
``window_size`` samples are compared with it:

- ``median_ratio``: the ratio of the medians; an excursion while it is outside
  [1/t, t], t = ``threshold`` (default 1.25);
- ``ks``: the two-sample Kolmogorov-Smirnov test; an excursion while its p-value is below
  ``threshold`` (default 0.001);
- ``off``: no alarm.

Entering an excursion returns one ``{"type": "calibration_suspect", ...}`` event; leaving
it is logged; a new excursion gives a new event. Traffic itself changes (congestion, rush
hour), so treat the alarm as a prompt to look at the calibration grid, not as proof.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

ShiftStatistic = Literal["median_ratio", "ks", "off"]
#: Default threshold of each statistic.
DEFAULT_SHIFT_THRESHOLD: dict[str, float] = {"median_ratio": 1.25, "ks": 0.001, "off": 0.0}


def ks_pvalue(sample_a: np.ndarray, sample_b: np.ndarray) -> tuple[float, float]:
    """Return the two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value."""
    a, b = np.sort(sample_a), np.sort(sample_b)
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / len(a)
    cdf_b = np.searchsorted(b, values, side="right") / len(b)
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    n_eff = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d  # Stephens' correction
    p = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))


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
        """Add one track's speed; return an event when an excursion starts."""
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
            _, value = ks_pvalue(baseline, recent)
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
