"""One stream's pipeline, run in the current process: the worker the service supervises.

:class:`StreamWorker` is a plain class behind the small :class:`Worker` interface (start,
stop, status, latest frame as JPEG, events): the service runs it in a child process
(:mod:`engine.serve.process`), tests may run it in-process, and a cluster can hold it in a Ray
actor, since every method takes and returns plain picklable values and none calls back.

It runs what `vistream run` runs: the pipeline of :func:`engine.config.load_pipeline`, the
source of :func:`engine.config.parse_sources` (supervised reconnects and frame policy
included) and the sinks of :func:`engine.sinks.outputs.open_outputs`, into
``DATA/streams/<name>/<UTC start time>/``, plus a :class:`FrameTap` that keeps the latest
frame and the recent events in memory. Nothing is encoded until someone asks for a JPEG.

With ``publish`` URLs, the object events also go to those brokers through the stream's spool
``DATA/streams/<name>/spool.sqlite``, which outlives a run: what one run of the stream could
not deliver (a broker down, the worker killed) goes out first when the stream runs again,
here or, with the data directory on shared storage, on another node of a cluster.

Status (:meth:`StreamWorker.status`): ``state`` is ``starting`` (building the pipeline, loading
models, first connection), ``running`` (frames flow), ``reconnecting`` (the source is lost or
unreachable and being retried), ``failed`` (the pipeline stopped with an error) or
``stopped`` (stopped on request, or a file source ended).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from engine.errors import EngineError
from engine.frame import Batch, Frame, SourceInfo
from engine.pipeline import Pipeline
from engine.publish.delivery import SPOOL_NAME, EventDelivery
from engine.publish.outputs import open_published_outputs
from engine.serve.streams import PipelineCatalog, StreamConfig, with_calibration
from engine.sources.supervised import SupervisedSource
from engine.sources.uri import mask_credentials
from engine.stage import Context

logger = logging.getLogger(__name__)

#: Events kept in memory per stream (the latest; everything is also in events.jsonl).
EVENTS_KEPT = 200
#: At most one ``objects`` summary event per this many seconds.
OBJECTS_EVENT_INTERVAL_S = 1.0
#: At a stop, how long the brokers may take to acknowledge what is spooled (the worker's stop
#: budget is 10 s); the rest stays in the stream's spool for its next run.
PUBLISH_DRAIN_S = 4.0
# fps is measured over at least this long (and frame ages over the frames of that window).
_FPS_WINDOW_S = 2.0


class Worker(Protocol):
    """What the service needs of a stream worker, wherever it runs."""

    def start(self) -> None:
        """Start the pipeline (returns at once; models load in the background)."""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading, process the frames in flight, finalize the outputs."""

    def status(self) -> dict[str, Any]:
        """The live status fields (see the module docstring)."""

    def latest_jpeg(self, *, annotated: bool = True, after_seq: int = -1) -> tuple[int, bytes] | None:
        """The newest frame as ``(seq, JPEG)``, or None when none is newer than ``after_seq``."""

    def events_since(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Events after ``seq``, oldest first, and the seq to ask from next time."""


class FrameTap:
    """A sink that keeps the latest frame and the recent events of a stream in memory.

    Holding a reference costs nothing per frame; the JPEG is made only on request.

    Args:
        stream: The stream's name (put on every event).
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.frame: Frame | None = None
        self.frame_seq = -1
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.event_seq = 0
        self._lock = threading.Lock()
        self._last_objects_s = 0.0

    def open(self, context: Context) -> None:
        """Nothing to create."""

    def write(self, batch: Batch) -> None:
        """Keep the batch's last frame; record its frames' events and a periodic object summary."""
        for frame in batch:
            for event in frame.events:
                self.add_event({**event, "frame": frame.index})
            now_s = time.monotonic()
            if now_s - self._last_objects_s >= OBJECTS_EVENT_INTERVAL_S:
                summary = _objects_summary(frame)
                if summary is not None:
                    self._last_objects_s = now_s
                    self.add_event(summary)
        if len(batch):
            with self._lock:
                self.frame = batch[len(batch) - 1]
                self.frame_seq += 1

    def add_event(self, event: dict[str, Any]) -> None:
        """Append an event (JSON-ready, with a ``type``); it gets ``seq``, ``time`` and ``stream``."""
        with self._lock:
            self.event_seq += 1
            self.events.append(
                {
                    "seq": self.event_seq,
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "stream": self.stream,
                    **event,
                }
            )

    def events_since(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Events with a ``seq`` above ``seq``, and the newest seq."""
        with self._lock:
            return self.event_seq, [event for event in self.events if event["seq"] > seq]

    def latest(self) -> tuple[int, Frame | None]:
        """The latest frame and its sequence number (-1 and None before the first)."""
        with self._lock:
            return self.frame_seq, self.frame

    def end_of_stream(self, source_id: str) -> None:
        """Keep the last frame: the editor may still want a still picture."""

    def close(self) -> None:
        """Nothing to finalize."""


class _SegmentNotes:
    """Hears a supervised source's segments: a loss becomes an event and the last error."""

    def __init__(self, tap: FrameTap) -> None:
        self.tap = tap
        self.last_reason: str | None = None

    def segment_started(self, source_id: str, segment: int, info: SourceInfo, event: dict[str, Any]) -> None:
        """Nothing: the pipeline puts the connection event on the segment's first frame."""

    def segment_ended(self, source_id: str, segment: int, reason: str) -> None:
        self.last_reason = mask_credentials(reason)
        self.tap.add_event({"type": "source_lost", "segment": segment, "reason": self.last_reason})


class StreamWorker:
    """Runs one stream's pipeline on a thread of this process (see the module docstring).

    Args:
        config: The stream (validated by the service).
        data_dir: The service's data directory (outputs go to ``streams/<name>/``).
        jpeg_quality: JPEG quality of snapshots and live frames, 1 to 100.
    """

    def __init__(self, config: StreamConfig, *, data_dir: Path, jpeg_quality: int = 80) -> None:
        self.config = config
        self.data_dir = Path(data_dir)
        self.jpeg_quality = jpeg_quality
        self.tap = FrameTap(config.name)
        self.out_dir: Path | None = None
        self._pipeline: Pipeline | None = None
        self._source: Any = None
        self._notes = _SegmentNotes(self.tap)
        self._thread: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._error: str | None = None
        self._ended = False
        self._history: deque[tuple[float, int]] = deque(maxlen=64)
        self._jpeg_cache: tuple[int, bool, bytes] | None = None
        self._delivery: EventDelivery | None = None

    def start(self) -> None:
        """Start the pipeline thread."""
        self._thread = threading.Thread(
            target=self._run, name=f"vistream-stream-{self.config.name}", daemon=True
        )
        self._thread.start()

    @property
    def done(self) -> bool:
        """True once the pipeline thread has finished (ended, failed or stopped)."""
        return self._thread is not None and not self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Request a stop and wait up to ``timeout_s`` for the outputs to be finalized."""
        self._stop_requested.set()
        if self._pipeline is not None:
            self._pipeline.request_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        config = self.config
        try:
            spec = PipelineCatalog(self.data_dir).load(config.pipeline)
            if config.calibration is not None:
                spec = with_calibration(spec, Path(config.calibration))
            source_spec = config.source_spec()
            feed = source_spec.build()
            self._source = feed.source
            if isinstance(feed.source, SupervisedSource):
                feed.source.subscribe(self._notes)
            pipeline = Pipeline.from_spec(spec, with_drawing=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            self.out_dir = self.data_dir / "streams" / config.name / stamp
            outputs = open_published_outputs(
                self.out_dir,
                pipeline,
                write_video=config.record_video,
                source_ids=[config.name],
                publish=config.publish or (),
                spool_path=self.data_dir / "streams" / config.name / SPOOL_NAME,
            )
            self._delivery = outputs.delivery
            self._pipeline = pipeline
            try:
                if not self._stop_requested.is_set():
                    pipeline.run([feed], [*outputs.sinks, self.tap])
            finally:
                # What the brokers do not take in time stays in the stream's spool: the next
                # run of this stream (a restart, or another node of a cluster) sends it.
                outputs.close_delivery(drain_timeout_s=PUBLISH_DRAIN_S)
        except EngineError as error:
            self._error = mask_credentials(str(error))
            logger.error("stream %s failed: %s", config.name, self._error)
        except Exception as error:  # a bug, or a library's own error: the stream fails, not the worker
            self._error = mask_credentials(f"{type(error).__name__}: {error}")
            logger.exception("stream %s failed", config.name)
        else:
            self._ended = True

    # -- reading ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The stream's live figures: state, fps, frame age p50/p99 (ms), counts, last error."""
        pipeline = self._pipeline
        result: dict[str, Any] = {
            "state": "starting",
            "fps": 0.0,
            "frame_age_p50_ms": None,
            "frame_age_p99_ms": None,
            "frames": 0,
            "dropped": 0,
            "reconnects": 0,
            "last_error": self._error,
            "width": None,
            "height": None,
            "outputs": str(self.out_dir) if self.out_dir is not None else None,
            "delivery": self._delivery.stats().to_dict() if self._delivery is not None else None,
        }
        if pipeline is not None:
            name = self.config.name
            metrics = pipeline.metrics
            with metrics.lock:
                frames = metrics.frames_out[name]
                dropped = metrics.frames_dropped[name]
                reconnects = metrics.reconnects[name]
                source_state = metrics.source_state.get(name)
                ages = metrics.frame_age_ms.get(name)
                fps, fresh = self._fps(frames)
                recent = ages.recent(max(1, min(fresh, 1000))) if ages is not None and frames else None
            result.update(frames=frames, dropped=dropped, reconnects=reconnects, fps=round(fps, 2))
            if recent is not None and recent.size:
                p50, p99 = np.percentile(recent, [50, 99])
                result.update(frame_age_p50_ms=round(float(p50), 1), frame_age_p99_ms=round(float(p99), 1))
            state = pipeline.sources.get(name)
            if state is not None and state.info.width:
                result.update(width=state.info.width, height=state.info.height)
            result["state"] = self._state(source_state, frames)
            if result["last_error"] is None and result["state"] == "reconnecting":
                source = self._source
                result["last_error"] = self._notes.last_reason or (
                    source.last_error if isinstance(source, SupervisedSource) else None
                )
        elif self.done:
            result["state"] = "failed" if self._error else "stopped"
        return result

    def _fps(self, frames: int) -> tuple[float, int]:
        """fps over the last ~2 s of status calls, and the frames in that window."""
        now_s = time.monotonic()
        self._history.append((now_s, frames))
        while len(self._history) > 2 and now_s - self._history[1][0] >= _FPS_WINDOW_S:
            self._history.popleft()
        then_s, then_frames = self._history[0]
        if now_s - then_s < 0.2:
            return 0.0, 0
        return (frames - then_frames) / (now_s - then_s), frames - then_frames

    def _state(self, source_state: str | None, frames: int) -> str:
        if self.done:
            return "failed" if self._error else "stopped"
        if self._stop_requested.is_set():
            return "stopped"
        if source_state == "up":
            return "running"
        if source_state == "failed":
            return "failed"
        source = self._source
        if source_state == "down" and (
            frames > 0 or (isinstance(source, SupervisedSource) and source.failed_attempts > 0)
        ):
            return "reconnecting"
        return "starting" if frames == 0 else "running"

    def latest_jpeg(self, *, annotated: bool = True, after_seq: int = -1) -> tuple[int, bytes] | None:
        """The newest frame as JPEG (annotated canvas, or the raw picture), encoded now.

        Returns:
            ``(seq, bytes)``, or None when there is no frame newer than ``after_seq``.
        """
        seq, frame = self.tap.latest()
        if frame is None or seq <= after_seq:
            return None
        cached = self._jpeg_cache
        if cached is not None and cached[0] == seq and cached[1] == annotated:
            return seq, cached[2]
        image = frame.canvas if annotated and frame.canvas is not None else frame.image
        if not isinstance(image, np.ndarray):  # a 3×H×W torch tensor of a GPU pipeline
            image = image.permute(1, 2, 0).contiguous().cpu().numpy()
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            return None
        data = encoded.tobytes()
        self._jpeg_cache = (seq, annotated, data)
        return seq, data

    def events_since(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        """Events after ``seq`` (see :meth:`FrameTap.events_since`)."""
        return self.tap.events_since(seq)


def _objects_summary(frame: Frame) -> dict[str, Any] | None:
    """A compact event of what is in the frame (tracked objects, class, speed), or None if nothing."""
    objects: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for layer, detections in frame.layers.items():
        if not len(detections):
            continue
        names = detections.data.get("class_name")
        speeds = detections.data.get("speed_kmh")
        ids = detections.tracker_id
        for row in range(min(len(detections), 50)):
            name = str(names[row]) if names is not None else layer
            counts[name] = counts.get(name, 0) + 1
            item: dict[str, Any] = {"class_name": name, "layer": layer}
            if ids is not None and int(ids[row]) >= 0:
                item["track_id"] = int(ids[row])
            if speeds is not None and np.isfinite(speeds[row]):
                item["speed_kmh"] = round(float(speeds[row]), 1)
            objects.append(item)
    if not objects:
        return None
    return {"type": "objects", "frame": frame.index, "counts": counts, "objects": objects}
