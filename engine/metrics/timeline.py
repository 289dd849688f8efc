"""Per-frame timelines of a pipeline run: where each frame spent its time, capture to sink.

:class:`TimelineRecorder` is a :class:`~engine.pipeline.PipelineObserver`; it records, for
every frame, its capture time, the entry and exit of each stage call that processed it and
the time every sink had written it. :meth:`TimelineRecorder.timeline` turns that into
numpy arrays (:class:`Timeline`) and :func:`decompose` splits each frame's end-to-end
latency into segments that add up to it exactly:

Convention:
    - Times are ``time.monotonic_ns()`` (the clock of ``Frame.capture_ns``); durations in
      the results are milliseconds (float64).
    - ``batch_fill``: capture -> the capture of the last frame of its batch (waiting for the
      rest of the batch to arrive).
    - ``queue``: that -> entry of the first stage (waiting in the read-ahead queue, or for
      the loop to finish earlier batches). For a file read faster than it is processed this
      is where the read-ahead lives; for a live source it is staleness.
    - ``stage:<name>``: entry -> exit of the stage call (the whole batch's call: every frame
      of a batch waits for all of it).
    - ``handoff``: exit of a stage -> entry of the next, summed over the chain (loop and
      observer overhead).
    - ``sink``: exit of the last stage -> every sink written.
    - ``end_to_end`` = ``batch_fill + queue + sum(stages) + handoff + sink`` per frame.

Frames a stage failed on under the ``skip`` policy miss the later stages: their stage
segments are NaN and they are left out of the decomposition (counted in ``incomplete``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.frame import Batch
from engine.metrics.run import percentiles_ms

#: Names of the non-stage segments, in the order they happen to a frame.
WAIT_SEGMENTS = ("batch_fill", "queue")
TAIL_SEGMENTS = ("handoff", "sink")


@dataclass
class _Record:
    source_id: str
    index: int
    capture_ns: int
    batch_ready_ns: int
    batch_size: int
    stage_ns: list[tuple[int, int] | None]
    written_ns: int | None = None


@dataclass(frozen=True)
class Timeline:
    """Per-frame timestamps of a run, one row per frame that reached the sinks.

    Rows are in output order. ``stage_start_ns``/``stage_end_ns`` hold -1 where a stage did
    not process the frame.

    Attributes:
        stage_names: Stage names, in pipeline order (the columns of the stage arrays).
        source_ids: (n,) str, the frame's source.
        index: (n,) int64, the frame's index in its source.
        capture_ns: (n,) int64.
        batch_ready_ns: (n,) int64, capture time of the last frame of the frame's batch.
        batch_size: (n,) int64.
        stage_start_ns: (n, stages) int64.
        stage_end_ns: (n, stages) int64.
        written_ns: (n,) int64.
    """

    stage_names: tuple[str, ...]
    source_ids: np.ndarray
    index: np.ndarray
    capture_ns: np.ndarray
    batch_ready_ns: np.ndarray
    batch_size: np.ndarray
    stage_start_ns: np.ndarray
    stage_end_ns: np.ndarray
    written_ns: np.ndarray

    def __len__(self) -> int:
        return int(self.capture_ns.size)

    def select(self, rows: np.ndarray) -> Timeline:
        """The timeline of the frames picked by a boolean mask or an index array."""
        return Timeline(
            stage_names=self.stage_names,
            source_ids=self.source_ids[rows],
            index=self.index[rows],
            capture_ns=self.capture_ns[rows],
            batch_ready_ns=self.batch_ready_ns[rows],
            batch_size=self.batch_size[rows],
            stage_start_ns=self.stage_start_ns[rows],
            stage_end_ns=self.stage_end_ns[rows],
            written_ns=self.written_ns[rows],
        )

    @property
    def complete(self) -> np.ndarray:
        """(n,) bool: every stage processed the frame."""
        return np.all(self.stage_start_ns >= 0, axis=1)

    def end_to_end_ms(self) -> np.ndarray:
        """(n,) capture -> sink written, in ms."""
        return (self.written_ns - self.capture_ns) / 1e6


class TimelineRecorder:
    """A pipeline observer that records every frame's timeline.

    Thread-safe: pipelines running on several threads may share one recorder.

    Args:
        stage_names: Names of the pipeline's stages, in order.
    """

    def __init__(self, stage_names: Sequence[str]) -> None:
        self.stage_names = tuple(stage_names)
        self._position = {name: position for position, name in enumerate(self.stage_names)}
        self._open: dict[tuple[str, int], _Record] = {}
        self._done: list[_Record] = []
        self._lock = threading.Lock()

    def on_stage(self, stage_name: str, batch: Batch, started_ns: int, finished_ns: int) -> None:
        """Record one stage call for every frame of the batch."""
        position = self._position.get(stage_name)
        if position is None:  # a stage the recorder was not told about
            return
        with self._lock:
            batch_ready_ns = max(frame.capture_ns for frame in batch)
            for frame in batch:
                record = self._record(frame.source_id, frame.index, frame.capture_ns)
                if record.stage_ns[0] is None and position == 0:
                    record.batch_ready_ns, record.batch_size = batch_ready_ns, len(batch)
                record.stage_ns[position] = (started_ns, finished_ns)

    def on_output(self, batch: Batch, written_ns: int) -> None:
        """Close the timelines of the batch's frames."""
        with self._lock:
            batch_ready_ns = max(frame.capture_ns for frame in batch)
            for frame in batch:
                key = (frame.source_id, frame.index)
                record = self._open.pop(key, None)
                if record is None:  # no stage saw it (a pipeline without stages)
                    record = self._new(frame.source_id, frame.index, frame.capture_ns)
                    record.batch_ready_ns, record.batch_size = batch_ready_ns, len(batch)
                record.written_ns = written_ns
                self._done.append(record)

    def clear(self) -> None:
        """Forget everything recorded so far (e.g. after a warm-up)."""
        with self._lock:
            self._open.clear()
            self._done.clear()

    def __len__(self) -> int:
        return len(self._done)

    def timeline(self) -> Timeline:
        """The frames written so far, as arrays."""
        with self._lock:
            done = list(self._done)
        count, stages = len(done), len(self.stage_names)
        start = np.full((count, stages), -1, dtype=np.int64)
        end = np.full((count, stages), -1, dtype=np.int64)
        for row, record in enumerate(done):
            for column, times in enumerate(record.stage_ns):
                if times is not None:
                    start[row, column], end[row, column] = times
        return Timeline(
            stage_names=self.stage_names,
            source_ids=np.array([record.source_id for record in done], dtype=str),
            index=np.array([record.index for record in done], dtype=np.int64),
            capture_ns=np.array([record.capture_ns for record in done], dtype=np.int64),
            batch_ready_ns=np.array([record.batch_ready_ns for record in done], dtype=np.int64),
            batch_size=np.array([record.batch_size for record in done], dtype=np.int64),
            stage_start_ns=start,
            stage_end_ns=end,
            written_ns=np.array([record.written_ns for record in done], dtype=np.int64),
        )

    def _record(self, source_id: str, index: int, capture_ns: int) -> _Record:
        key = (source_id, index)
        record = self._open.get(key)
        if record is None:
            record = self._open[key] = self._new(source_id, index, capture_ns)
        return record

    def _new(self, source_id: str, index: int, capture_ns: int) -> _Record:
        return _Record(
            source_id=source_id,
            index=index,
            capture_ns=capture_ns,
            batch_ready_ns=capture_ns,
            batch_size=1,
            stage_ns=[None] * len(self.stage_names),
        )


def decompose(timeline: Timeline) -> dict[str, np.ndarray]:
    """Split each complete frame's end-to-end latency into segments (see module docstring).

    Returns:
        Segment name -> (m,) float64 ms over the m complete frames, with keys
        ``batch_fill``, ``queue``, ``stage:<name>`` per stage, ``handoff``, ``sink`` and
        ``end_to_end``. The segments of a frame add up to its ``end_to_end``.
    """
    full = timeline.select(timeline.complete)
    segments: dict[str, np.ndarray] = {}
    if not full.stage_names:
        segments["batch_fill"] = (full.batch_ready_ns - full.capture_ns) / 1e6
        segments["queue"] = np.zeros(len(full))
        segments["handoff"] = np.zeros(len(full))
        segments["sink"] = (full.written_ns - full.batch_ready_ns) / 1e6
        segments["end_to_end"] = full.end_to_end_ms()
        return segments
    first_start = full.stage_start_ns[:, 0]
    # A batch can start before its last frame's capture only through clock skew between
    # sources that stamp capture_ns themselves; clamp so the two waits stay non-negative.
    ready_ns = np.minimum(full.batch_ready_ns, first_start)
    segments["batch_fill"] = (ready_ns - full.capture_ns) / 1e6
    segments["queue"] = (first_start - ready_ns) / 1e6
    for column, name in enumerate(full.stage_names):
        segments[f"stage:{name}"] = (full.stage_end_ns[:, column] - full.stage_start_ns[:, column]) / 1e6
    gaps_ns = full.stage_start_ns[:, 1:] - full.stage_end_ns[:, :-1]
    segments["handoff"] = gaps_ns.sum(axis=1) / 1e6
    segments["sink"] = (full.written_ns - full.stage_end_ns[:, -1]) / 1e6
    segments["end_to_end"] = full.end_to_end_ms()
    return segments


def percentiles(values_ms: np.ndarray) -> dict[str, Any]:
    """count, mean, p50, p95, p99 and max of a latency sample, in ms, ignoring NaN gaps."""
    values = np.asarray(values_ms, dtype=np.float64)
    return percentiles_ms(values[np.isfinite(values)])


def check_sum(segments: dict[str, np.ndarray], reference_ms: np.ndarray | None = None) -> dict[str, Any]:
    """How well the segment means add up to the mean end-to-end latency.

    Args:
        segments: Output of :func:`decompose`.
        reference_ms: An independently measured end-to-end latency for the same frames, row
            for row (the pipeline's own ``RunMetrics.end_to_end_ms``); NaN where unknown.
            The check then runs over the frames it covers; without it, over all frames
            against the timeline's own end-to-end figure.

    Returns:
        ``frames`` checked, ``segments_sum_ms`` (sum of the segment means),
        ``end_to_end_ms`` (mean of the reference), ``residual_ms`` (their difference),
        ``residual_share`` (of the end-to-end mean), ``reference`` (which end-to-end
        figure was used) and ``max_frame_residual_ms`` (largest per-frame difference
        between the segments' sum and the reference).
    """
    parts = [name for name in segments if name != "end_to_end"]
    end_to_end = segments["end_to_end"]
    rows = np.ones(end_to_end.size, dtype=bool)
    reference, source = end_to_end, "timeline"
    if reference_ms is not None and len(reference_ms) == end_to_end.size and np.isfinite(reference_ms).any():
        rows = np.isfinite(reference_ms)
        reference, source = np.asarray(reference_ms, dtype=np.float64), "pipeline metrics"
    if not rows.any():
        return {"frames": 0, "segments_sum_ms": None, "end_to_end_ms": None, "residual_ms": None}
    per_frame_sum = np.sum([segments[name][rows] for name in parts], axis=0)
    total = float(sum(float(segments[name][rows].mean()) for name in parts))
    mean_e2e = float(reference[rows].mean())
    residual = mean_e2e - total
    return {
        "frames": int(rows.sum()),
        "reference": source,
        "segments_sum_ms": round(total, 3),
        "end_to_end_ms": round(mean_e2e, 3),
        "residual_ms": round(residual, 3),
        "residual_share": round(residual / mean_e2e, 5) if mean_e2e > 0 else None,
        "max_frame_residual_ms": round(float(np.max(np.abs(per_frame_sum - reference[rows]))), 4),
    }


def concat_timelines(timelines: Sequence[Timeline]) -> Timeline:
    """One timeline with the rows of several (of pipelines with the same stages), in order."""
    if not timelines:
        return TimelineRecorder(()).timeline()
    names = timelines[0].stage_names
    if any(timeline.stage_names != names for timeline in timelines):
        raise ValueError("timelines of pipelines with different stages cannot be joined")
    return Timeline(
        stage_names=names,
        source_ids=np.concatenate([t.source_ids for t in timelines]),
        index=np.concatenate([t.index for t in timelines]),
        capture_ns=np.concatenate([t.capture_ns for t in timelines]),
        batch_ready_ns=np.concatenate([t.batch_ready_ns for t in timelines]),
        batch_size=np.concatenate([t.batch_size for t in timelines]),
        stage_start_ns=np.concatenate([t.stage_start_ns for t in timelines]),
        stage_end_ns=np.concatenate([t.stage_end_ns for t in timelines]),
        written_ns=np.concatenate([t.written_ns for t in timelines]),
    )
