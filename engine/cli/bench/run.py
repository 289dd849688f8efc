"""Running a pipeline on N streams for `vistream bench`, with a timeline recorder watching.

Streams are independent copies of one source named ``cam0``, ``cam1``...; files can be
replayed as live cameras (:class:`~engine.sources.replay.LiveReplaySource`). With the
multi-source pipeline every stream goes through one pipeline, batched together.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.frame import SourceInfo
from engine.metrics.resources import ResourceSampler
from engine.metrics.timeline import Timeline, TimelineRecorder, concat_timelines
from engine.pipeline import Pipeline
from engine.sinks.outputs import open_outputs
from engine.sources import open_source, parse_uri
from engine.sources.base import Source
from engine.sources.replay import LiveReplaySource, replay_decimation


class _InfoRecorder:
    """Wraps a source to remember the SourceInfo its ``open()`` returned."""

    def __init__(self, source: Source, source_id: str) -> None:
        self.source = source
        self.source_id = source_id
        self.info: SourceInfo | None = None

    def open(self) -> SourceInfo:
        self.info = self.source.open()
        return self.info

    def frames(self) -> Any:
        return self.source.frames()

    def close(self) -> None:
        self.source.close()

    @property
    def dropped_frames(self) -> int | None:
        return getattr(self.source, "dropped_frames", None)


@dataclass
class RunResult:
    """What one configuration produced.

    Attributes:
        streams: Number of streams.
        timeline: Every frame written, in output order (lanes one after the other).
        reference_e2e_ms: The pipelines' own end-to-end measurements, row for row (empty
            when they do not line up with the timeline).
        sources: The streams' sources, with the SourceInfo each reported.
        sampler: CPU, memory and GPU samples taken during the run.
        pipeline_summaries: ``RunMetrics.summary()`` of each pipeline.
        wall_s: Seconds from starting the pipelines to their end (model loading included).
        measured: Rows of ``timeline`` that count (warm-up left out); set by summarising.
        segments: :func:`~engine.metrics.timeline.decompose` of the measured rows.
    """

    streams: int
    timeline: Timeline
    reference_e2e_ms: np.ndarray
    sources: list[_InfoRecorder]
    sampler: ResourceSampler
    pipeline_summaries: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    measured: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    segments: dict[str, np.ndarray] = field(default_factory=dict)


def source_kind(uri: str) -> str:
    """``file``, ``rtsp``, ``v4l2``, ``test`` or ``synthetic``."""

    if uri.strip().lower().startswith("synthetic://"):
        return "synthetic"
    return parse_uri(uri).kind


def make_sources(uri: str, count: int, *, live: bool, fps: float | None = None) -> list[Source]:
    """``count`` independent sources of ``uri`` named ``cam0..``; files replayed live if asked."""

    replay = live and source_kind(uri) == "file"
    keep_every = 1
    if replay and fps is not None:
        # A 15 fps replay of a 60 fps file keeps one frame in 4: the readers skip the other
        # three before converting them, as a camera at 15 fps never sends them.
        probe = open_source(uri, source_id="probe")
        try:
            keep_every = replay_decimation(probe.open().fps, fps)
        finally:
            probe.close()
    sources: list[Source] = []
    for position in range(count):
        source_id = f"cam{position}"
        if replay:
            sources.append(
                LiveReplaySource(
                    lambda source_id=source_id: open_source(  # type: ignore[misc]
                        uri, source_id=source_id, keep_every=keep_every
                    ),
                    source_id=source_id,
                    fps=fps,
                    phase=position / count,  # cameras are not in lock step
                )
            )
        else:
            sources.append(open_source(uri, source_id=source_id))
    return sources


def multi_source_supported() -> bool:
    """True when :meth:`engine.pipeline.Pipeline.run` takes several sources at once."""

    parameters = inspect.signature(Pipeline.run).parameters
    return (
        "sources" in parameters
        or "source" in parameters
        and "Sequence" in str(parameters["source"].annotation)
    )


@dataclass
class _Lane:
    """One pipeline of a run, with its sources, sinks and recorder."""

    pipeline: Any
    sources: list[_InfoRecorder]
    sinks: list[Any]
    recorder: TimelineRecorder
    error: BaseException | None = None


def run_configuration(
    spec: Any,
    source_uri: str,
    count: int,
    *,
    out_dir: Path,
    live: bool,
    fps: float | None = None,
    video: bool = False,
    frames: int | None = None,
    duration_s: float | None = None,
) -> RunResult:
    """Run the pipeline on ``count`` streams of ``source_uri`` and collect timeline and resources.

    With a multi-source pipeline all streams go through one pipeline (batched together);
    otherwise each stream gets its own pipeline on its own thread, in this process.

    Args:
        spec: The pipeline spec.
        source_uri: What each stream reads.
        count: Number of streams.
        out_dir: The run's outputs go to ``out_dir/outputs/streams_<count>``.
        live: Replay files as live cameras.
        fps: Pace of live replays (None: the file's rate).
        video: Keep drawing stages and write annotated video.
        frames: Frames per stream, or None.
        duration_s: Stop this long after the first frame reached the sinks, or None.
    """

    # Stages first: a stage may load a native runtime that must precede GStreamer's plugins
    # (OpenVINO, see engine.backends.preload_runtime).
    first: Pipeline | None = Pipeline.from_spec(spec, with_drawing=video)
    made = make_sources(source_uri, count, live=live, fps=fps)
    sources = [_InfoRecorder(source, f"cam{position}") for position, source in enumerate(made)]
    out_root = out_dir / "outputs" / f"streams_{count}"
    groups = [sources] if multi_source_supported() else [[source] for source in sources]
    lanes: list[_Lane] = []
    for group in groups:
        pipeline, first = first or Pipeline.from_spec(spec, with_drawing=video), None
        recorder = TimelineRecorder([named.name for named in pipeline.stages])
        pipeline.observers.append(recorder)
        out_dir = out_root if len(groups) == 1 else out_root / group[0].source_id
        extra: dict[str, Any] = {}
        if len(group) > 1 and "source_ids" in inspect.signature(open_outputs).parameters:
            extra["source_ids"] = [source.source_id for source in group]  # per-source files
        outputs = open_outputs(out_dir, pipeline, write_video=video, **extra)
        lanes.append(_Lane(pipeline=pipeline, sources=group, sinks=outputs.sinks, recorder=recorder))

    def run_lane(lane: _Lane) -> None:
        max_frames = frames  # per source
        source: Any = lane.sources if len(lane.sources) > 1 else lane.sources[0]
        try:
            lane.pipeline.run(source, lane.sinks, max_frames=max_frames)
        except BaseException as error:  # re-raised on the calling thread
            lane.error = error
            for other in lanes:
                other.pipeline.request_stop()

    with ResourceSampler(device=spec.settings.device) as sampler:
        started_ns = time.monotonic_ns()
        threads = [
            threading.Thread(target=run_lane, args=(lane,), name=f"bench-lane-{i}")
            for i, lane in enumerate(lanes)
        ]
        for thread in threads:
            thread.start()
        if duration_s is not None:
            _stop_after(lanes, threads, duration_s)
        for thread in threads:
            thread.join()
        wall_s = (time.monotonic_ns() - started_ns) / 1e9
    for lane in lanes:
        if lane.error is not None:
            raise lane.error
    timelines = [lane.recorder.timeline() for lane in lanes]
    references = [
        pipeline_end_to_end_ms(lane.pipeline.metrics, len(t))
        for lane, t in zip(lanes, timelines, strict=True)
    ]
    timeline = concat_timelines(timelines)
    result = RunResult(
        streams=count,
        timeline=timeline,
        reference_e2e_ms=np.concatenate(references) if references else np.empty(0),
        sources=sources,
        sampler=sampler,
        pipeline_summaries=[lane.pipeline.metrics.summary() for lane in lanes],
        wall_s=wall_s,
    )
    return result


def pipeline_end_to_end_ms(metrics: Any, rows: int) -> np.ndarray:
    """The pipeline's own end-to-end samples, aligned with the recorder's ``rows`` frames.

    NaN where the pipeline no longer keeps the sample (it keeps the most recent ones) or
    when it counted a different number of frames than the recorder saw.
    """
    series = metrics.end_to_end_ms
    aligned = np.full(rows, np.nan)
    if len(series) != rows:
        return aligned
    values = series.recent() if hasattr(series, "recent") else np.asarray(series, dtype=np.float64)
    kept = min(len(values), rows)
    if kept:
        aligned[rows - kept :] = values[len(values) - kept :]
    return aligned


def _stop_after(lanes: list[_Lane], threads: list[threading.Thread], duration_s: float) -> None:
    """Request a stop ``duration_s`` after the first frame reached the sinks (or all ended)."""
    while not any(len(lane.recorder) for lane in lanes):
        if not any(thread.is_alive() for thread in threads):
            return
        time.sleep(0.05)
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline and any(thread.is_alive() for thread in threads):
        time.sleep(0.05)
    for lane in lanes:
        lane.pipeline.request_stop()
