"""Run metrics: per-stage latency, throughput, frame age, counts per source; summarised as JSON.

Memory stays flat however long a run lasts: every latency series keeps exact totals (count,
sum, max), cumulative histogram buckets (what Prometheus scrapes) and a ring of the most
recent :data:`RECENT_SAMPLES` samples (float32), from which percentiles are computed. A file
run shorter than that gets exact percentiles; a camera left running for days gets the
percentiles of its last ~36 minutes at 30 fps.

The pipeline thread records; the metrics endpoint and the status line read through
:meth:`RunMetrics.snapshot`, under one lock.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.frame import Batch

#: Samples kept per latency series for percentiles (a ring buffer of float32).
RECENT_SAMPLES = 65_536

#: Recent samples a snapshot keeps per series (a status interval's worth, and then some).
SNAPSHOT_SAMPLES = 4096

#: Upper bounds of the latency histogram buckets, in milliseconds (plus +Inf).
BUCKETS_MS: tuple[float, ...] = (
    0.5,
    1,
    2.5,
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
)


def percentiles_ms(samples_ms: Any) -> dict[str, float]:
    """Summarise latency samples as count, mean, p50, p95, p99 and max, in milliseconds."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "count": int(values.size),
        "mean_ms": round(float(values.mean()), 3),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(values.max()), 3),
    }


class LatencySeries:
    """Latency samples in milliseconds: exact totals, histogram buckets, recent samples.

    Args:
        capacity: How many recent samples are kept for percentiles.
    """

    def __init__(self, capacity: int = RECENT_SAMPLES) -> None:
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        #: Samples per bucket of :data:`BUCKETS_MS` (not cumulative); the last one is +Inf.
        self.bucket_counts = [0] * (len(BUCKETS_MS) + 1)
        self._ring = np.zeros(capacity, dtype=np.float32)

    def add(self, value_ms: float) -> None:
        """Record one sample."""
        self._ring[self.count % self._ring.size] = value_ms
        self.count += 1
        self.sum_ms += value_ms
        self.max_ms = max(self.max_ms, value_ms)
        self.bucket_counts[bisect.bisect_left(BUCKETS_MS, value_ms)] += 1

    def __len__(self) -> int:
        return self.count

    def recent(self, last: int | None = None) -> np.ndarray:
        """The most recent samples, oldest first (at most ``last`` of them)."""
        kept = min(self.count, self._ring.size)
        wanted = kept if last is None else max(0, min(last, kept))
        end = self.count % self._ring.size
        indices = (np.arange(end - wanted, end)) % self._ring.size
        return self._ring[indices].astype(np.float64)

    def latest(self) -> float | None:
        """The last sample, or None when there is none."""
        return None if self.count == 0 else float(self._ring[(self.count - 1) % self._ring.size])

    def summary(self) -> dict[str, float]:
        """Count, mean and max over every sample; p50/p95/p99 over the recent ones."""
        if self.count == 0:
            return {"count": 0}
        result = percentiles_ms(self.recent())
        result.update(
            count=self.count,
            mean_ms=round(self.sum_ms / self.count, 3),
            max_ms=round(self.max_ms, 3),
        )
        return result

    def copy(self, keep_last: int | None = None) -> LatencySeries:
        """An independent copy (for a consistent snapshot) with every total and bucket, and
        the last ``keep_last`` samples (all kept ones when None)."""
        kept = min(self.count, self._ring.size)
        if keep_last is not None:
            kept = min(kept, keep_last)
        twin = LatencySeries(capacity=max(kept, 1))
        twin._ring[:kept] = self.recent(kept)
        twin.count, twin.sum_ms, twin.max_ms = self.count, self.sum_ms, self.max_ms
        twin.bucket_counts = list(self.bucket_counts)
        # recent() reads the ring from position count % size backwards; line the copy up.
        twin._ring = np.roll(twin._ring, self.count % twin._ring.size)
        return twin


def _series() -> dict[str, LatencySeries]:
    return defaultdict(LatencySeries)


@dataclass
class RunMetrics:
    """Everything the pipeline measures during one run.

    Attributes:
        stage_latency_ms: Per stage name, the wall time of each call on a batch.
        stage_frame_latency_ms: Per stage name, each call's time divided by its batch size.
        end_to_end_ms: Per frame, capture (decoder output) to sink written, all sources.
        frame_age_ms: Per source, the same age at the moment its frames were written.
        frames_in: Frames read per source.
        frames_out: Frames written per source.
        frames_dropped: Frames a ``latest`` frame policy dropped per source (stale ones).
        frames_invalid: Frames without a picture (zero size) dropped per source.
        reconnects: Reconnections per source (a live source that came back).
        queue_depth: Per source, frames waiting in its queue when the last batch was formed.
        source_state: Per source: ``up`` (delivering frames), ``down`` (connecting or
            reconnecting), ``ended`` or ``failed``.
        source_errors: Per source, the error that ended it, if one did.
        skipped_frames: Frames a stage failed on under the ``skip`` policy.
        errors: Count of stage failures per ``"stage: ExceptionType"``.
        detections_per_class: Per layer, per class name, detections counted over the run.
        track_ids: Per layer, the set of (source, track id) pairs seen.
    """

    stage_latency_ms: dict[str, LatencySeries] = field(default_factory=_series)
    stage_frame_latency_ms: dict[str, LatencySeries] = field(default_factory=_series)
    end_to_end_ms: LatencySeries = field(default_factory=LatencySeries)
    frame_age_ms: dict[str, LatencySeries] = field(default_factory=_series)
    frames_in: Counter[str] = field(default_factory=Counter)
    frames_out: Counter[str] = field(default_factory=Counter)
    frames_dropped: Counter[str] = field(default_factory=Counter)
    frames_invalid: Counter[str] = field(default_factory=Counter)
    reconnects: Counter[str] = field(default_factory=Counter)
    queue_depth: dict[str, int] = field(default_factory=dict)
    source_state: dict[str, str] = field(default_factory=dict)
    source_errors: dict[str, str] = field(default_factory=dict)
    skipped_frames: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    dropped_by_stage: Counter[str] = field(default_factory=Counter)
    detections_per_class: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    track_ids: dict[str, set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    started_ns: int = field(default_factory=time.monotonic_ns)
    loop_started_ns: int | None = None
    last_output_ns: int | None = None
    finished_ns: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_stage(self, name: str, elapsed_ns: int, batch_size: int) -> None:
        """Record one stage call on a batch of ``batch_size`` frames."""
        elapsed_ms = elapsed_ns / 1e6
        with self.lock:
            self.stage_latency_ms[name].add(elapsed_ms)
            self.stage_frame_latency_ms[name].add(elapsed_ms / max(batch_size, 1))

    def record_output(self, batch: Batch, now_ns: int) -> None:
        """Record frames that reached the sinks: latency, counts, classes and track ids."""
        with self.lock:
            self.last_output_ns = now_ns
            for frame in batch:
                age_ms = (now_ns - frame.capture_ns) / 1e6
                self.frames_out[frame.source_id] += 1
                self.end_to_end_ms.add(age_ms)
                self.frame_age_ms[frame.source_id].add(age_ms)
                for layer_name, detections in frame.layers.items():
                    class_names = detections.data.get("class_name")
                    if class_names is not None and len(class_names):
                        self.detections_per_class[layer_name].update(np.asarray(class_names).tolist())
                    if detections.tracker_id is not None and len(detections):
                        seen = self.track_ids[layer_name]
                        for track_id in detections.tracker_id.tolist():
                            if track_id >= 0:  # -1 marks a detection without a track
                                seen.add((frame.source_id, track_id))

    def record_stage_error(self, kind: str, frames: int, *, skipped: bool) -> None:
        """Count a stage failure of ``kind`` (``"stage: Type"``) on a batch of ``frames``."""
        with self.lock:
            self.errors[kind] += 1
            if skipped:
                self.skipped_frames += frames

    def record_stage_drops(self, drops: list[tuple[str, str]]) -> None:
        """Count frames stages took out on purpose, per ``"stage: reason"``."""
        with self.lock:
            self.dropped_by_stage.update(f"{stage}: {reason}" for stage, reason in drops)

    def update_source(self, source_id: str, **values: Any) -> None:
        """Set per-source values: ``frames_in``, ``frames_dropped``, ``frames_invalid``, ``queue_depth``,
        ``state``, ``error``, or add ``reconnects`` (an increment)."""
        with self.lock:
            if "frames_in" in values:
                self.frames_in[source_id] = values["frames_in"]
            if "frames_dropped" in values:
                self.frames_dropped[source_id] = values["frames_dropped"]
            if values.get("frames_invalid"):
                self.frames_invalid[source_id] = values["frames_invalid"]
            if "queue_depth" in values:
                self.queue_depth[source_id] = values["queue_depth"]
            if "state" in values:
                self.source_state[source_id] = values["state"]
            if "error" in values:
                self.source_errors[source_id] = values["error"]
            if "reconnects" in values:
                self.reconnects[source_id] += values["reconnects"]

    def snapshot(self, keep_last: int = SNAPSHOT_SAMPLES) -> RunMetrics:
        """A consistent copy to read from another thread (metrics endpoint, status line):
        every count, total and bucket, and the last ``keep_last`` samples of each series."""
        with self.lock:
            return RunMetrics(
                stage_latency_ms={k: v.copy(keep_last) for k, v in self.stage_latency_ms.items()},
                stage_frame_latency_ms={k: v.copy(keep_last) for k, v in self.stage_frame_latency_ms.items()},
                end_to_end_ms=self.end_to_end_ms.copy(keep_last),
                frame_age_ms={k: v.copy(keep_last) for k, v in self.frame_age_ms.items()},
                frames_in=Counter(self.frames_in),
                frames_out=Counter(self.frames_out),
                frames_dropped=Counter(self.frames_dropped),
                frames_invalid=Counter(self.frames_invalid),
                reconnects=Counter(self.reconnects),
                queue_depth=dict(self.queue_depth),
                source_state=dict(self.source_state),
                source_errors=dict(self.source_errors),
                skipped_frames=self.skipped_frames,
                errors=Counter(self.errors),
                started_ns=self.started_ns,
                loop_started_ns=self.loop_started_ns,
                last_output_ns=self.last_output_ns,
                finished_ns=self.finished_ns,
            )

    def wall_s(self) -> float:
        """Seconds from the start of the run to its end (or to now while it runs)."""
        end_ns = self.finished_ns if self.finished_ns is not None else time.monotonic_ns()
        return (end_ns - self.started_ns) / 1e9

    def loop_s(self) -> float:
        """Seconds the frame loop ran: from its start to the last frame written (or to now).

        Startup (opening sources, loading and warming up models) and teardown (closing
        outputs) are not in it, so ``frames / loop_s`` is the in-loop throughput that
        model-only and other tools' figures are compared with.
        """
        if self.loop_started_ns is None:
            return 0.0
        end_ns = self.last_output_ns if self.finished_ns is not None else time.monotonic_ns()
        return max(0, (end_ns or self.loop_started_ns) - self.loop_started_ns) / 1e9

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary of the run.

        ``fps`` is frames out per second of the frame loop (:meth:`loop_s`); ``wall_s`` is
        the whole run, ``startup_s`` the part before the loop (sources opened, models
        loaded and warmed up).
        """
        frames = sum(self.frames_out.values())
        wall_s = self.wall_s()
        loop_s = self.loop_s()
        startup_ns = (self.loop_started_ns or self.started_ns) - self.started_ns
        with self.lock:
            return {
                "frames": frames,
                "frames_in": dict(self.frames_in),
                "frames_out": dict(self.frames_out),
                "frames_dropped": dict(self.frames_dropped),
                "frames_invalid": dict(self.frames_invalid),
                "reconnects": dict(self.reconnects),
                "wall_s": round(wall_s, 3),
                "startup_s": round(startup_ns / 1e9, 3),
                "loop_s": round(loop_s, 3),
                "fps": round(frames / loop_s, 2) if loop_s > 0 else None,
                "skipped_frames": self.skipped_frames,
                "errors": dict(self.errors),
                "dropped_by_stage": dict(self.dropped_by_stage),
                "stage_latency_ms": {
                    name: series.summary() for name, series in self.stage_latency_ms.items()
                },
                "stage_latency_per_frame_ms": {
                    name: series.summary() for name, series in self.stage_frame_latency_ms.items()
                },
                "end_to_end_latency_ms": self.end_to_end_ms.summary(),
                "frame_age_ms": {source: series.summary() for source, series in self.frame_age_ms.items()},
                "detections_per_class": {
                    layer: dict(counts.most_common()) for layer, counts in self.detections_per_class.items()
                },
                "unique_tracks": {layer: len(ids) for layer, ids in self.track_ids.items()},
            }


def status_line(
    now: RunMetrics, before: RunMetrics | None, interval_s: float, queue_depths: dict[str, int]
) -> str:
    """One line for a live run's periodic status: the numbers of the metrics endpoint.

    Args:
        now: A snapshot of the run's metrics.
        before: The snapshot of the previous status line (None for the first).
        interval_s: Seconds between the two snapshots.
        queue_depths: Frames waiting per source.

    Returns:
        ``"29.9 fps | gate: up, 15.0 fps, age p50 80 ms p99 120 ms, dropped 4, queue 1,
        reconnects 0 | ..."``; fps and ages cover the interval, counts the whole run.
    """
    interval_s = max(interval_s, 1e-9)
    previous = before.frames_out if before is not None else Counter[str]()
    total = sum(now.frames_out.values()) - sum(previous.values())
    parts = [f"{total / interval_s:.1f} fps"]
    if now.errors:
        parts[0] += f", {sum(now.errors.values())} stage errors"
    for source_id in sorted(set(now.source_state) | set(now.frames_in)):
        fresh = now.frames_out[source_id] - previous[source_id]
        series = now.frame_age_ms.get(source_id)
        age = "no frames"
        if series is not None and fresh > 0:
            p50, p99 = np.percentile(series.recent(fresh), [50, 99])
            age = f"age p50 {p50:.0f} ms p99 {p99:.0f} ms"
        parts.append(
            f"{source_id}: {now.source_state.get(source_id, 'up')}, {fresh / interval_s:.1f} fps, {age}, "
            f"dropped {now.frames_dropped[source_id]}, queue {queue_depths.get(source_id, 0)}, "
            f"reconnects {now.reconnects[source_id]}"
            + (f", invalid {now.frames_invalid[source_id]}" if now.frames_invalid[source_id] else "")
        )
    return " | ".join(parts)
