"""The pipeline: lifecycle of sources, stages and sinks, the batch loop, the one error policy.

Lifecycle: the sources open, then the stages in order, then the sinks; everything is closed
in reverse order on the way out (an ExitStack), also when a later ``open()`` or a batch fails,
so outputs are finalized for every frame already processed.

Frames of every source are read on their own threads and batched together
(:mod:`engine.batching`). Sources end independently: one that ends or fails is finished
(``end_of_stream`` for its stages and sinks) while the others go on; the run ends when all
have ended, ``max_frames`` were taken from each, or a stop is requested. A source failure is
raised when the run is over, after every other source was processed and every output
finalized. A supervised (reconnecting) source ends a *segment* at each loss: its stages get
``end_of_stream`` (trackers restart), its sinks keep writing, and the first frame of the next
segment carries a ``source_reconnected`` event.

With ``workers`` > 1 the leading stages that declare ``concurrent = True`` (``detect``) run
on that many threads, batches ahead of the rest (:mod:`engine.run_ahead`); the other stages
and the sinks still see every batch in order, on the calling thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from engine.batching import Batcher, FeedReader, Marker, SegmentEnded, SegmentStarted, SourceEnded
from engine.checks import check_optional_int
from engine.config import PipelineSettings, PipelineSpec
from engine.errors import ConfigError, EngineError, SourceError
from engine.frame import Batch, SourceInfo
from engine.metrics.run import RunMetrics
from engine.run_ahead import RunAhead, StageRun, StageWatchdog, run_stages
from engine.sinks.base import SegmentEndSink, Sink
from engine.sources.base import Feed, SegmentedSource, Source
from engine.sources.uri import mask_credentials
from engine.stage import Context, NamedStage

logger = logging.getLogger(__name__)


class PipelineObserver(Protocol):
    """Sees every stage call and every batch output, e.g. to record per-frame timelines.

    Times are ``time.monotonic_ns()``, the clock of ``Frame.capture_ns``.
    """

    def on_stage(self, stage_name: str, batch: Batch, started_ns: int, finished_ns: int) -> None:
        """A stage processed ``batch`` between the two times."""

    def on_output(self, batch: Batch, written_ns: int) -> None:
        """Every sink has written ``batch``."""


@dataclass
class SourceState:
    """What the run knows about one of its sources.

    Attributes:
        info: The source's facts (updated when a supervised source connects).
        status: ``running``, ``ended`` (its end, or a stop), or ``failed``.
        segments: Connections of a supervised source so far (1 for other sources).
        error: Why it failed, credentials masked.
    """

    info: SourceInfo
    status: str = "running"
    segments: int = 1
    error: str | None = None


class Pipeline:
    """Runs frames from one or many sources through stages into sinks.

    Args:
        stages: The stages in order, with their names.
        settings: Device, batching, error policy, workers, drain timeout (validated when
            they were made; see :class:`engine.config.PipelineSettings`).
        config_dir: Directory relative paths were resolved against.
        observers: Told about every stage call and output (benchmarks use this).
    """

    def __init__(
        self,
        stages: Sequence[NamedStage],
        settings: PipelineSettings | None = None,
        *,
        config_dir: Path = Path("."),
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        self.stages = list(stages)
        self.settings = settings if settings is not None else PipelineSettings()
        self.config_dir = config_dir
        self.observers = list(observers)
        self.metrics = RunMetrics()
        #: Per source id, its facts and state; filled as the run opens its sources.
        self.sources: dict[str, SourceState] = {}
        self._infos: dict[str, SourceInfo] = {}  # the Context's view, updated on reconnects
        self._readers: list[FeedReader] = []
        self._stop = threading.Event()
        self._logged_errors: set[str] = set()
        self._pending_events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._watchdog: StageWatchdog | None = None

    @classmethod
    def from_spec(
        cls, spec: PipelineSpec, *, with_drawing: bool = True, observers: Sequence[PipelineObserver] = ()
    ) -> Pipeline:
        """Construct every stage of a spec (stages with ``draws = True`` only if drawing)."""
        stages = [
            NamedStage(name=stage_spec.name, stage=stage_spec.build())
            for stage_spec in spec.stages
            if with_drawing or not stage_spec.stage_class.draws
        ]
        return cls(stages, spec.settings, config_dir=spec.config_dir, observers=observers)

    def request_stop(self) -> None:
        """Stop reading; frames already queued are processed and outputs finalized.

        Safe to call from a signal handler or another thread.
        """
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`request_stop` was called."""
        return self._stop.is_set()

    @property
    def source_info(self) -> SourceInfo | None:
        """The first source's facts (the only one in a single-source run)."""
        return next(iter(self.sources.values())).info if self.sources else None

    def queue_depths(self) -> dict[str, int]:
        """Frames waiting per source right now."""
        return {reader.source_id: reader.queued_frames for reader in self._readers}

    def stage_summaries(self) -> dict[str, Any]:
        """Per stage name, what the stage reports about the run (stages with ``summary()``)."""
        summaries: dict[str, Any] = {}
        for named in self.stages:
            summary = named.stage.summary()
            if summary is not None:
                summaries[named.name] = summary
        return summaries

    def run(
        self,
        sources: Source | Feed | Sequence[Source | Feed],
        sinks: Sequence[Sink] = (),
        *,
        max_frames: int | None = None,
        on_batch: Callable[[Batch], None] | None = None,
    ) -> RunMetrics:
        """Process the sources until all end, ``max_frames`` are taken from each, or a stop.

        Args:
            sources: One source, or several (plain sources or :class:`Feed` with a frame
                policy); their ``source_id`` must differ.
            sinks: Where processed batches go.
            max_frames: Frames processed per source before it is stopped; None for all.
            on_batch: Called with each batch after the sinks wrote it.

        Raises:
            SourceError: A source failed to open, or failed while reading (raised after
                every other source ran to its end and every output was finalized).
            EngineError: A stage or sink failed under the ``fail`` policy.
        """
        feeds = _as_feeds(sources)
        check_optional_int("max_frames", max_frames, low=1)
        settings = self.settings
        self.metrics = RunMetrics()
        self.sources, self._infos, self._readers = {}, {}, []
        self._pending_events.clear()
        failures: list[tuple[str, BaseException]] = []
        with ExitStack() as stack:
            stack.callback(self._finish_metrics)
            condition = threading.Condition()
            for feed in feeds:
                stack.callback(_close_quietly, "source", feed.source.close)
                info = feed.source.open()
                if info.source_id in self.sources:
                    raise ConfigError(f"two sources are named '{info.source_id}'; give each its own id")
                self.sources[info.source_id] = SourceState(info=info, segments=0 if _supervised(feed) else 1)
                self._infos[info.source_id] = info
                self._readers.append(
                    FeedReader(
                        feed,
                        info,
                        condition,
                        read_ahead_frames=max(settings.read_ahead_frames, settings.batch_size),
                    )
                )
                self.metrics.update_source(
                    info.source_id, state="down" if _supervised(feed) else "up", frames_in=0, frames_dropped=0
                )
            context = Context(
                device=settings.device,
                sources=self._infos,
                config_dir=self.config_dir,
                batch_size=settings.batch_size,
            )
            ahead_stages = self.ahead_stages()
            self._watchdog = self._make_watchdog()
            for named in self.stages:
                # Registered before open() so a stage that fails halfway through opening
                # still gets the chance to release what it had allocated.
                stack.callback(self._close_stage, named)
                try:
                    named.stage.open(
                        replace(context, workers=settings.workers) if named in ahead_stages else context
                    )
                except EngineError as error:
                    raise type(error)(f"stage '{named.name}': {error}") from error
            for sink in sinks:
                stack.callback(_close_quietly, type(sink).__name__, sink.close)
                sink.open(context)
            batcher = Batcher(
                self._readers,
                condition,
                batch_size=settings.batch_size,
                max_wait_ms=settings.max_wait_ms,
                max_frames=max_frames,
                stop=self._stop,
                drain_timeout_s=settings.drain_timeout_s,
            )
            stack.callback(batcher.close)
            # The frame loop starts here: what came before is startup (summary "startup_s").
            self.metrics.loop_started_ns = time.monotonic_ns()
            batcher.start()
            items: Iterable[Batch | StageRun | Marker] = batcher
            if ahead_stages:
                ahead = RunAhead(
                    batcher, ahead_stages, workers=settings.workers, stop=self._stop, watchdog=self._watchdog
                )
                stack.callback(ahead.close)
                items = ahead
            for item in items:
                if isinstance(item, Batch):
                    self._process(StageRun(item), sinks, on_batch)
                elif isinstance(item, StageRun):
                    self._process(item, sinks, on_batch)
                else:
                    self._handle_marker(item, sinks, failures)
            for source_id, state in self.sources.items():  # stopped, or cut by the drain timeout
                if state.status == "running":
                    self._end_source(source_id, sinks)
        if failures:
            if len(failures) == 1:
                raise failures[0][1]
            raise SourceError(
                f"{len(failures)} sources failed: "
                + "; ".join(f"{source_id}: {error}" for source_id, error in failures)
            )
        return self.metrics

    def _make_watchdog(self) -> StageWatchdog | None:
        """The stage watchdog of this run: ``stage_timeout_s``, ``auto`` resolved by liveness."""
        live = any(state.info.live for state in self.sources.values())
        timeout_s = self.settings.stage_timeout_for(live)
        if timeout_s is None:
            return None
        logger.debug("stage watchdog: %g s per call", timeout_s)
        return StageWatchdog(timeout_s)

    def _close_stage(self, named: NamedStage) -> None:
        """Close a stage, unless a call of it hung: closing it could hang the same way."""
        if self._watchdog is not None and self._watchdog.hung(named.name):
            logger.warning("not closing stage '%s': a call that hung has not returned", named.name)
            return
        _close_quietly(f"stage '{named.name}'", named.stage.close)

    def ahead_stages(self) -> list[NamedStage]:
        """The leading ``concurrent`` stages that run ahead on the workers (none with 1 worker)."""
        if self.settings.workers == 1:
            return []
        leading: list[NamedStage] = []
        for named in self.stages:
            if not named.stage.concurrent:
                break
            leading.append(named)
        return leading

    def _finish_metrics(self) -> None:
        self._update_source_metrics()
        self.metrics.finished_ns = time.monotonic_ns()

    def _update_source_metrics(self) -> None:
        for reader in self._readers:
            self.metrics.update_source(
                reader.source_id,
                frames_in=reader.frames_in,
                frames_dropped=reader.dropped,
                frames_invalid=reader.invalid,
                queue_depth=reader.queued_frames,
            )

    def _handle_marker(
        self, marker: Marker, sinks: Sequence[Sink], failures: list[tuple[str, BaseException]]
    ) -> None:
        state = self.sources[marker.source_id]
        if isinstance(marker, SegmentStarted):
            state.info = self._infos[marker.source_id] = marker.info
            state.segments = marker.segment
            self._pending_events[marker.source_id].append(marker.event)
            self.metrics.update_source(marker.source_id, state="up", reconnects=int(marker.segment > 1))
        elif isinstance(marker, SegmentEnded):
            # Trackers and other per-source state restart: no track glued across the gap.
            self.metrics.update_source(marker.source_id, state="down")
            for named in self.stages:
                named.stage.end_of_stream(marker.source_id)
            reason = mask_credentials(marker.reason)
            for sink in sinks:
                if isinstance(sink, SegmentEndSink):
                    sink.segment_ended(marker.source_id, reason)
        elif isinstance(marker, SourceEnded):
            if marker.error is not None:
                message = mask_credentials(str(marker.error))
                state.status, state.error = "failed", message
                self.metrics.update_source(marker.source_id, error=message, state="failed")
                failures.append((marker.source_id, marker.error))
                others = [sid for sid, other in self.sources.items() if other.status == "running"]
                # Said now only while others go on; otherwise the run's error says it once.
                logger.log(
                    logging.ERROR if others else logging.DEBUG,
                    "source %s failed: %s%s",
                    marker.source_id,
                    message,
                    f" (the other sources go on: {', '.join(others)})" if others else "",
                )
            self._end_source(marker.source_id, sinks)

    def _end_source(self, source_id: str, sinks: Sequence[Sink]) -> None:
        state = self.sources[source_id]
        if state.status == "running":
            state.status = "ended"
            self.metrics.update_source(source_id, state="ended")
        for named in self.stages:
            named.stage.end_of_stream(source_id)
        for sink in sinks:
            sink.end_of_stream(source_id)

    def _process(
        self, run: StageRun, sinks: Sequence[Sink], on_batch: Callable[[Batch], None] | None
    ) -> None:
        """Run the stages ``run`` has not been through yet, then the sinks."""
        if self._pending_events:
            for frame in run.batch:
                events = self._pending_events.pop(frame.source_id, None)
                if events:
                    frame.events[:0] = events
        run_stages(run, self.stages[run.stages_done :], self._watchdog)
        batch = run.batch
        for timing in run.timings:
            elapsed_ns = timing.finished_ns - timing.started_ns
            self.metrics.record_stage(timing.stage_name, elapsed_ns, timing.frames)
            for observer in self.observers:
                observer.on_stage(timing.stage_name, batch, timing.started_ns, timing.finished_ns)
        if run.drops:
            self.metrics.record_stage_drops(run.drops)
        if run.error is not None and run.failed_stage is not None:
            self._handle_stage_error(run.failed_stage, batch, run.error)
        for sink in sinks:
            sink.write(batch)
        written_ns = time.monotonic_ns()
        self.metrics.record_output(batch, written_ns)
        self._update_source_metrics()
        for observer in self.observers:
            observer.on_output(batch, written_ns)
        if on_batch is not None:
            on_batch(batch)

    def _handle_stage_error(self, stage_name: str, batch: Batch, error: Exception) -> None:
        where = f"stage '{stage_name}' failed"
        if batch.frames:
            where += f" on {batch[0].source_id} frame {batch[0].index}"
        kind = f"{stage_name}: {type(error).__name__}"
        self.metrics.record_stage_error(kind, len(batch), skipped=self.settings.on_error == "skip")
        if self.settings.on_error == "fail":
            if isinstance(error, EngineError):
                raise type(error)(f"{where}: {error}") from error
            raise error
        reason = f"{kind}: {error}"
        for frame in batch:
            frame.skipped_reason = reason
        if kind not in self._logged_errors:  # once per kind, not once per frame
            self._logged_errors.add(kind)
            logger.warning(
                "%s: %s (skipping; later errors of this kind are counted only)", where, error, exc_info=error
            )


def _as_feeds(sources: Source | Feed | Sequence[Source | Feed]) -> list[Feed]:
    items: list[Source | Feed] = list(sources) if isinstance(sources, (list, tuple)) else [sources]  # type: ignore[list-item]
    if not items:
        raise ConfigError("no source: give at least one")
    return [item if isinstance(item, Feed) else Feed(item) for item in items]


def _supervised(feed: Feed) -> bool:
    return isinstance(feed.source, SegmentedSource)


def _close_quietly(what: str, close: Callable[[], None]) -> None:
    """Close something during teardown without letting its error hide the original one."""
    try:
        close()
    except EngineError as error:  # e.g. a full disk: one line, it is not a bug
        logger.error("closing %s failed: %s", what, error)
    except Exception:
        logger.exception("closing %s failed", what)
