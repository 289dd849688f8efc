"""The pipeline: lifecycle of source, stages and sinks, the batch loop, the one error policy.

Lifecycle: the source opens, then the stages in order, then the sinks; everything is closed
in reverse order on the way out (an ExitStack), also when a later ``open()`` or a batch fails,
so outputs are finalized for every frame already processed.

Frames are read on a reader thread into a bounded queue: decoding overlaps processing, and
the loop can notice a stop request even while a live source delivers nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.config import PipelineSpec
from engine.errors import ConfigError, EngineError, SourceError
from engine.frame import Batch, Frame, SourceInfo
from engine.metrics import RunMetrics
from engine.sinks.base import Sink
from engine.sources.base import Source
from engine.stage import Context, Stage

logger = logging.getLogger(__name__)

ERROR_POLICIES = ("fail", "skip")
_POLL_S = 0.1  # how often a waiting loop re-checks the stop flag


@dataclass(frozen=True)
class NamedStage:
    """A constructed stage and the name metrics and summaries know it by."""

    name: str
    stage: Stage


class PipelineObserver(Protocol):
    """Sees every stage call and every batch output, e.g. to record per-frame timelines.

    Times are ``time.monotonic_ns()``, the clock of ``Frame.capture_ns``.
    """

    def on_stage(self, stage_name: str, batch: Batch, started_ns: int, finished_ns: int) -> None:
        """A stage processed ``batch`` between the two times."""

    def on_output(self, batch: Batch, written_ns: int) -> None:
        """Every sink has written ``batch``."""


class _EndOfStream:
    """Queue marker: the reader thread reached the end (``error`` set when it failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Pipeline:
    """Runs frames from one source through stages into sinks.

    Args:
        stages: The stages in order, with their names.
        batch_size: Frames per stage call.
        on_error: ``"fail"`` stops the run at the first stage error (outputs are still
            finalized); ``"skip"`` sends the failing batch on to the sinks unprocessed, marks
            its frames ``skipped_reason`` and counts them.
        device: Device given to stages in their :class:`Context`.
        config_dir: Directory relative paths were resolved against.
        read_ahead_frames: Size of the queue between the reader thread and the loop.
        observers: Told about every stage call and output (benchmarks use this).
    """

    def __init__(
        self,
        stages: Sequence[NamedStage],
        *,
        batch_size: int = 1,
        on_error: str = "fail",
        device: str = "cpu",
        config_dir: Path = Path("."),
        read_ahead_frames: int = 8,
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size}")
        if on_error not in ERROR_POLICIES:
            raise ConfigError(f"on_error: expected one of {', '.join(ERROR_POLICIES)}, got '{on_error}'")
        self.stages = list(stages)
        self.batch_size = batch_size
        self.on_error = on_error
        self.device = device
        self.config_dir = config_dir
        self.read_ahead_frames = max(read_ahead_frames, batch_size)
        self.observers = list(observers)
        self.metrics = RunMetrics()
        self.source_info: SourceInfo | None = None
        self._stop = threading.Event()
        self._logged_errors: set[str] = set()

    @classmethod
    def from_spec(cls, spec: PipelineSpec, *, with_drawing: bool = True) -> Pipeline:
        """Construct every stage of a spec (stages with ``draws = True`` only if drawing)."""
        stages = [
            NamedStage(name=stage_spec.name, stage=stage_spec.build())
            for stage_spec in spec.stages
            if with_drawing or not getattr(stage_spec.stage_class, "draws", False)
        ]
        return cls(
            stages,
            batch_size=spec.batch_size,
            on_error=spec.on_error,
            device=spec.device,
            config_dir=spec.config_dir,
        )

    def request_stop(self) -> None:
        """Ask the run to stop reading; frames in flight are finished and outputs finalized.

        Safe to call from a signal handler or another thread.
        """
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`request_stop` was called."""
        return self._stop.is_set()

    def stage_summaries(self) -> dict[str, Any]:
        """Per stage name, what the stage reports about the run (stages with ``summary()``)."""
        summaries: dict[str, Any] = {}
        for named in self.stages:
            summary = getattr(named.stage, "summary", None)
            if callable(summary):
                summaries[named.name] = summary()
        return summaries

    def run(
        self,
        source: Source,
        sinks: Sequence[Sink] = (),
        *,
        max_frames: int | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> RunMetrics:
        """Process the source until it ends, ``max_frames`` are read, or a stop is requested.

        Raises:
            SourceError: The source failed (after every frame read before was processed
                and written).
            EngineError: A stage or sink failed under the ``fail`` policy.
        """
        self.metrics = RunMetrics()
        with ExitStack() as stack:
            stack.callback(self._finish_metrics)
            self.source_info = source.open()
            stack.callback(_close_quietly, "source", source.close)
            context = Context(
                device=self.device,
                sources={self.source_info.source_id: self.source_info},
                config_dir=self.config_dir,
            )
            for named in self.stages:
                # Registered before open() so a stage that fails halfway through opening
                # still gets the chance to release what it had allocated.
                stack.callback(_close_quietly, f"stage '{named.name}'", named.stage.close)
                try:
                    named.stage.open(context)
                except EngineError as error:
                    raise type(error)(f"stage '{named.name}': {error}") from error
            for sink in sinks:
                stack.callback(_close_quietly, type(sink).__name__, sink.close)
                sink.open(context)
            self._loop(source, sinks, max_frames, on_batch)
            for named in self.stages:
                named.stage.end_of_stream(self.source_info.source_id)
            for sink in sinks:
                sink.end_of_stream(self.source_info.source_id)
        return self.metrics

    def _finish_metrics(self) -> None:
        self.metrics.finished_ns = time.monotonic_ns()

    def _loop(
        self,
        source: Source,
        sinks: Sequence[Sink],
        max_frames: int | None,
        on_batch: Callable[[Batch], None] | None,
    ) -> None:
        pending: list[Frame] = []
        frames_read = 0
        source_error: SourceError | None = None
        try:
            with closing(self._read_frames(source)) as frames:
                for frame in frames:
                    self.metrics.frames_in[frame.source_id] += 1
                    frames_read += 1
                    pending.append(frame)
                    if len(pending) >= self.batch_size:
                        self._process(Batch(pending), sinks, on_batch)
                        pending = []
                    if max_frames is not None and frames_read >= max_frames:
                        break
        except SourceError as error:
            source_error = error
        if pending:
            self._process(Batch(pending), sinks, on_batch)
        if source_error is not None:
            raise source_error

    def _read_frames(self, source: Source) -> Iterator[Frame]:
        """Yield the source's frames, read ahead on a thread, until the end or a stop."""
        frames: queue.Queue[Frame | _EndOfStream] = queue.Queue(maxsize=self.read_ahead_frames)
        reader_done = threading.Event()

        def read() -> None:
            marker = _EndOfStream()
            try:
                for frame in source.frames():
                    while not reader_done.is_set():
                        try:
                            frames.put(frame, timeout=_POLL_S)
                            break
                        except queue.Full:
                            continue
                    if reader_done.is_set():
                        return
            except BaseException as error:  # handed to the loop thread, which re-raises it
                marker = _EndOfStream(error)
            while not reader_done.is_set():
                try:
                    frames.put(marker, timeout=_POLL_S)
                    return
                except queue.Full:
                    continue

        reader = threading.Thread(target=read, name="vistream-reader", daemon=True)
        reader.start()
        try:
            while not self._stop.is_set():
                try:
                    item = frames.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(item, _EndOfStream):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            reader_done.set()
            source.close()  # makes a blocked frames() return so the reader thread ends
            reader.join(timeout=5.0)
            if reader.is_alive():
                logger.warning("the source did not stop within 5 s; leaving its reader thread behind")

    def _process(
        self, batch: Batch, sinks: Sequence[Sink], on_batch: Callable[[Batch], None] | None
    ) -> None:
        for named in self.stages:
            started_ns = time.monotonic_ns()
            try:
                batch = named.stage(batch)
            except Exception as error:
                self._handle_stage_error(named.name, batch, error)
                break
            finally:
                finished_ns = time.monotonic_ns()
                self.metrics.record_stage(named.name, finished_ns - started_ns, len(batch))
                for observer in self.observers:
                    observer.on_stage(named.name, batch, started_ns, finished_ns)
        for sink in sinks:
            sink.write(batch)
        written_ns = time.monotonic_ns()
        self.metrics.record_output(batch, written_ns)
        for observer in self.observers:
            observer.on_output(batch, written_ns)
        if on_batch is not None:
            on_batch(batch)

    def _handle_stage_error(self, stage_name: str, batch: Batch, error: Exception) -> None:
        first = batch[0]
        where = f"stage '{stage_name}' failed on {first.source_id} frame {first.index}"
        kind = f"{stage_name}: {type(error).__name__}"
        self.metrics.errors[kind] += 1
        if self.on_error == "fail":
            if isinstance(error, EngineError):
                raise type(error)(f"{where}: {error}") from error
            raise error
        reason = f"{kind}: {error}"
        for frame in batch:
            frame.skipped_reason = reason
        self.metrics.skipped_frames += len(batch)
        if kind not in self._logged_errors:  # once per kind, not once per frame
            self._logged_errors.add(kind)
            logger.warning("%s: %s (skipping; later errors of this kind are counted only)",
                           where, error, exc_info=error)


def _close_quietly(what: str, close: Callable[[], None]) -> None:
    """Close something during teardown without letting its error hide the original one."""
    try:
        close()
    except Exception:
        logger.exception("closing %s failed", what)
