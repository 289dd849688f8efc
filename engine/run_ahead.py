"""Running the leading stages of a pipeline on several batches at once.

A CPU model call uses the cores poorly at batch 1: splitting one small convolution across
two threads costs synchronisation, and while the model runs, nothing else (tracking, JSON,
the next decode) can. Two model calls on two frames at once, one thread each, get more
frames through the same cores (YOLO11n at 320 on this 2-core machine: about 200 fps against
170 for one call on two threads). On a busy machine a call split over cores also stalls
whenever one of its threads loses its core, where one-thread calls go on independently.

So the pipeline runs its *leading* stages that declare ``concurrent = True`` (stateless
between batches, safe on several threads, e.g. ``detect``) on ``workers`` threads, batches
ahead of the rest, while the main thread runs the remaining, stateful stages (tracking needs
frames in order) and the sinks on finished batches, in order.

:class:`RunAhead` keeps the order of everything it is given: batches come out as
:class:`StageRun` in the order they went in, and markers (source segments starting and
ending) stay where they were between them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from engine.batching import Marker
from engine.errors import StageTimeoutError
from engine.frame import Batch
from engine.stage import NamedStage, check_stage_output

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a blocked hand-over re-checks for a shutdown


@dataclass(frozen=True)
class StageTiming:
    """One stage call: when it started and finished (``time.monotonic_ns()``)."""

    stage_name: str
    started_ns: int
    finished_ns: int
    frames: int


@dataclass
class StageRun:
    """One batch on its way through the stages.

    Attributes:
        batch: The batch, as the last stage that ran returned it.
        timings: Every stage call so far, in order.
        stages_done: How many of the pipeline's stages have run (the failed one included).
        failed_stage: Name of the stage that raised, if one did (no later stage ran).
        error: What it raised.
        drops: ``(stage name, reason)`` per frame a stage took out with ``Batch.drop``.
    """

    batch: Batch
    timings: list[StageTiming] = field(default_factory=list)
    stages_done: int = 0
    failed_stage: str | None = None
    error: Exception | None = None
    drops: list[tuple[str, str]] = field(default_factory=list)


def run_stages(
    run: StageRun, stages: Sequence[NamedStage], watchdog: StageWatchdog | None = None
) -> StageRun:
    """Run ``stages`` on ``run.batch`` in order, stopping at the first that raises.

    Touches nothing but ``run`` and the stages, so it may run on any thread; the caller
    records the timings and handles the error. With a ``watchdog``, a call that does not
    return in time fails with :class:`~engine.errors.StageTimeoutError`; every stage of the
    batch then runs in one hand-over to a watchdog thread (:meth:`StageWatchdog.run_stages`).
    """
    if watchdog is not None:
        return watchdog.run_stages(run, stages)
    for named in stages:
        if run.error is not None or not run.batch.frames:  # failed, or every frame dropped
            break
        started_ns = time.monotonic_ns()
        try:
            run.batch = call_stage(named, run.batch, run.drops)
        except Exception as error:
            run.failed_stage, run.error = named.name, error
        run.timings.append(StageTiming(named.name, started_ns, time.monotonic_ns(), len(run.batch)))
        run.stages_done += 1
    return run


def call_stage(named: NamedStage, batch: Batch, drops: list[tuple[str, str]]) -> Batch:
    """Call one stage and enforce its contract (:func:`engine.stage.check_stage_output`).

    On success the declared drops are appended to ``drops`` and cleared from the batch; on a
    violation ``batch`` itself is left as it was given (the error policy passes it on).
    """
    given = [(frame.source_id, frame.index) for frame in batch.frames]
    frames = list(batch.frames)
    batch.dropped.clear()
    try:
        returned = check_stage_output(named.name, given, named.stage(batch))
    except BaseException:
        batch.frames[:] = frames  # undo a partial drop: the frames go on unprocessed
        batch.dropped.clear()
        raise
    drops.extend((named.name, reason) for _frame, reason in returned.dropped)
    returned.dropped.clear()
    return returned


class _Worker:
    """A daemon thread that runs the calls it is given, one at a time, until given None."""

    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="vistream-stage-call", daemon=True).start()

    def _loop(self) -> None:
        while (task := self.tasks.get()) is not None:
            task()


class StageWatchdog:
    """Gives up on stage calls that do not return within ``timeout_s``.

    Each call runs on a daemon worker thread (kept and reused while calls return in time)
    while the caller waits at most ``timeout_s``; a call
    that is not back by then raises :class:`~engine.errors.StageTimeoutError` for the batch
    (the pipeline's ``on_error`` policy decides: skip it, or end the run) and the stage is
    *hung* until that call returns: later calls fail at once without entering it, so a
    stateful stage is never entered twice. Python cannot cancel a thread; the hung one is a
    daemon and never holds up the process's exit.

    Args:
        timeout_s: Longest a stage call may take.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._hung: dict[str, tuple[threading.Event, float]] = {}
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def hung(self, stage_name: str) -> bool:
        """True while a call of ``stage_name`` that timed out has not returned."""
        with self._lock:
            entry = self._hung.get(stage_name)
        return entry is not None and not entry[0].is_set()

    def run_stages(self, run: StageRun, stages: Sequence[NamedStage]) -> StageRun:
        """:func:`run_stages` under the limit, every stage in ONE hand-over to a worker thread.

        One hand-over per batch rather than one per stage: each costs two GIL hand-offs, and
        with many live cameras (the watchdog's case) the other threads hold the GIL, so each
        took milliseconds (``traffic``, 10 cameras: track p50 3.2 ms against 1.0 without).
        Each stage call still gets ``timeout_s``: the worker says which stage it is in and
        since when, and the caller waits for that stage's deadline. On a timeout ``run``
        records a :class:`~engine.errors.StageTimeoutError` for the stage that hung, the
        worker is left to it and its later results are discarded.
        """
        if not stages or run.error is not None or not run.batch.frames:
            return run
        progress = threading.Condition()
        state: dict[str, Any] = {"stage": None, "since": 0.0, "done": False, "abandoned": False}

        def target() -> None:
            mine = StageRun(run.batch)
            try:
                for named in stages:
                    if mine.error is not None or not mine.batch.frames:
                        break
                    with progress:
                        state["stage"], state["since"] = named.name, time.monotonic()
                    started_ns = time.monotonic_ns()
                    try:
                        self._check_not_hung(named.name)
                        mine.batch = call_stage(named, mine.batch, mine.drops)
                    except Exception as error:
                        mine.failed_stage, mine.error = named.name, error
                    timing = StageTiming(named.name, started_ns, time.monotonic_ns(), len(mine.batch))
                    with progress:
                        if state["abandoned"]:
                            return  # the caller gave up on this batch: nothing more is published
                        run.batch, run.failed_stage, run.error = mine.batch, mine.failed_stage, mine.error
                        run.drops.extend(mine.drops)
                        mine.drops.clear()
                        run.timings.append(timing)
                        run.stages_done += 1
            finally:
                with progress:
                    state["done"] = True
                    progress.notify_all()

        with self._lock:
            worker = self._idle.pop() if self._idle else _Worker()
        worker.tasks.put(target)
        with progress:
            while not state["done"]:
                deadline = state["since"] + self.timeout_s if state["stage"] is not None else None
                wait_s = _POLL_S if deadline is None else deadline - time.monotonic()
                if wait_s <= 0:
                    break
                progress.wait(wait_s)
            if state["done"]:
                with self._lock:
                    self._idle.append(worker)  # reused: no thread start per batch
                return run
            state["abandoned"] = True
            stage_name, since = state["stage"], state["since"]
        worker.tasks.put(None)  # retire it once the hung call returns
        with self._lock:
            self._hung[stage_name] = (_returned(progress, state), since)
        logger.error(
            "stage '%s' did not return within %g s; it is skipped until that call returns",
            stage_name,
            self.timeout_s,
        )
        now_ns = time.monotonic_ns()
        run.failed_stage = stage_name
        run.error = StageTimeoutError(f"stage '{stage_name}' did not return within {self.timeout_s:g} s")
        run.timings.append(
            StageTiming(stage_name, now_ns - int(self.timeout_s * 1e9), now_ns, len(run.batch))
        )
        run.stages_done += 1
        return run

    def _check_not_hung(self, stage_name: str) -> None:
        with self._lock:
            entry = self._hung.get(stage_name)
        if entry is not None and not entry[0].is_set():
            raise StageTimeoutError(
                f"stage '{stage_name}' is still in a call that hung {time.monotonic() - entry[1]:.0f} s "
                f"ago (limit {self.timeout_s:g} s); not entered again"
            )


def _returned(progress: threading.Condition, state: dict[str, Any]) -> threading.Event:
    """An Event that is set once the worker behind ``state`` has finished its batch."""
    returned = threading.Event()

    def watch() -> None:
        with progress:
            while not state["done"]:
                progress.wait(_POLL_S)
        returned.set()

    threading.Thread(target=watch, name="vistream-hung-stage", daemon=True).start()
    return returned


@dataclass(frozen=True)
class _FeedFailed:
    error: BaseException


_END = object()


class RunAhead:
    """Runs ``stages`` on the batches of ``items`` on ``workers`` threads, ahead of the caller.

    Iterating yields, in input order, a :class:`StageRun` per batch (the stages done, or the
    one that failed) and every marker untouched. Besides the batch the caller holds, at most
    ``workers + 1`` are in the stages or finished and waiting (``workers`` queued for the
    caller, one more submitted by the feeder while it waits for room), so memory stays bounded.

    Args:
        items: Batches and markers, e.g. a :class:`engine.batching.Batcher`.
        stages: The leading concurrent stages.
        workers: Threads, i.e. batches in the stages at once.
        stop: Set on :meth:`close` so ``items`` stops taking frames (the pipeline's stop).
        watchdog: Limits each stage call (None: no limit).
    """

    def __init__(
        self,
        items: Iterable[Batch | Marker],
        stages: Sequence[NamedStage],
        *,
        workers: int,
        stop: threading.Event,
        join_timeout_s: float = 5.0,
        watchdog: StageWatchdog | None = None,
    ) -> None:
        self._items = items
        self._stages = list(stages)
        self._watchdog = watchdog
        self._stop = stop
        self._join_timeout_s = join_timeout_s
        self._closing = threading.Event()
        self._all_taken = False  # the caller got every entry (the feeder has ended)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vistream-stage")
        self._feeder = threading.Thread(target=self._feed, name="vistream-run-ahead", daemon=True)

    def __iter__(self) -> Iterator[StageRun | Marker]:
        self._feeder.start()
        while True:
            entry = self._queue.get()
            if entry is _END:
                self._all_taken = True
                return
            if isinstance(entry, _FeedFailed):
                raise entry.error
            if isinstance(entry, Future):
                yield entry.result()  # run_stages catches stage errors; this does not raise
            else:
                yield entry  # type: ignore[misc]

    def _feed(self) -> None:
        """The feeder thread: submit each batch as it comes, hand everything over in order."""
        try:
            for item in self._items:
                entry: object = item  # a marker goes through as it is
                if isinstance(item, Batch):
                    entry = self._pool.submit(run_stages, StageRun(item), self._stages, self._watchdog)
                if not self._hand_over(entry):
                    return
        except BaseException as error:  # a bug in the batcher: the caller raises it
            self._hand_over(_FeedFailed(error))
            return
        self._hand_over(_END)

    def _hand_over(self, entry: object) -> bool:
        """Queue ``entry``, waiting for room; False when closing (the caller left)."""
        while not self._closing.is_set():
            try:
                self._queue.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop intake, let the feeder thread leave and finish the running stage calls."""
        self._closing.set()
        if not self._all_taken and self._feeder.is_alive():
            self._stop.set()  # the caller left early (an error): stop taking frames
            self._feeder.join(self._join_timeout_s)
            if self._feeder.is_alive():
                logger.warning("the run-ahead feeder did not stop within %.0f s", self._join_timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
