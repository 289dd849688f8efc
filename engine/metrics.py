"""Run metrics: per-stage latency, throughput, frame age, counts; summarised as JSON.

Latency samples are kept as plain float lists (a few bytes per batch) and summarised with
numpy percentiles at the end, so a run of a million frames still costs only megabytes.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.frame import Batch


def percentiles_ms(samples_ms: list[float]) -> dict[str, float]:
    """Summarise latency samples as count, mean, p50, p95, p99 and max, in milliseconds."""
    if not samples_ms:
        return {"count": 0}
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "count": int(values.size),
        "mean_ms": round(float(values.mean()), 3),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(values.max()), 3),
    }


@dataclass
class RunMetrics:
    """Everything the pipeline measures during one run.

    Attributes:
        stage_latency_ms: Per stage name, the wall time of each call on a batch.
        stage_frame_latency_ms: Per stage name, each call's time divided by its batch size.
        end_to_end_ms: Per frame, capture (decoder output) to sink written.
        frames_in: Frames read per source.
        frames_out: Frames written per source.
        skipped_frames: Frames a stage failed on under the ``skip`` policy.
        errors: Count of stage failures per ``"stage: ExceptionType"``.
        detections_per_class: Per layer, per class name, detections counted over the run.
        track_ids: Per layer, the set of (source, track id) pairs seen.
    """

    stage_latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stage_frame_latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    end_to_end_ms: list[float] = field(default_factory=list)
    frames_in: Counter[str] = field(default_factory=Counter)
    frames_out: Counter[str] = field(default_factory=Counter)
    skipped_frames: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    detections_per_class: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    track_ids: dict[str, set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    started_ns: int = field(default_factory=time.monotonic_ns)
    finished_ns: int | None = None

    def record_stage(self, name: str, elapsed_ns: int, batch_size: int) -> None:
        """Record one stage call on a batch of ``batch_size`` frames."""
        elapsed_ms = elapsed_ns / 1e6
        self.stage_latency_ms[name].append(elapsed_ms)
        self.stage_frame_latency_ms[name].append(elapsed_ms / max(batch_size, 1))

    def record_output(self, batch: Batch, now_ns: int) -> None:
        """Record frames that reached the sinks: latency, counts, classes and track ids."""
        for frame in batch:
            self.frames_out[frame.source_id] += 1
            self.end_to_end_ms.append((now_ns - frame.capture_ns) / 1e6)
            for layer_name, detections in frame.layers.items():
                class_names = detections.data.get("class_name")
                if class_names is not None and len(class_names):
                    self.detections_per_class[layer_name].update(class_names.tolist())
                if detections.tracker_id is not None and len(detections):
                    seen = self.track_ids[layer_name]
                    for track_id in detections.tracker_id.tolist():
                        if track_id >= 0:  # -1 marks a detection without a track
                            seen.add((frame.source_id, track_id))

    def wall_s(self) -> float:
        """Seconds from the start of the run to its end (or to now while it runs)."""
        end_ns = self.finished_ns if self.finished_ns is not None else time.monotonic_ns()
        return (end_ns - self.started_ns) / 1e9

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary of the run."""
        frames = sum(self.frames_out.values())
        wall_s = self.wall_s()
        return {
            "frames": frames,
            "frames_in": dict(self.frames_in),
            "frames_out": dict(self.frames_out),
            "wall_s": round(wall_s, 3),
            "fps": round(frames / wall_s, 2) if wall_s > 0 else None,
            "skipped_frames": self.skipped_frames,
            "errors": dict(self.errors),
            "stage_latency_ms": {
                name: percentiles_ms(samples) for name, samples in self.stage_latency_ms.items()
            },
            "stage_latency_per_frame_ms": {
                name: percentiles_ms(samples) for name, samples in self.stage_frame_latency_ms.items()
            },
            "end_to_end_latency_ms": percentiles_ms(self.end_to_end_ms),
            "detections_per_class": {
                layer: dict(counts.most_common()) for layer, counts in self.detections_per_class.items()
            },
            "unique_tracks": {layer: len(ids) for layer, ids in self.track_ids.items()},
        }
