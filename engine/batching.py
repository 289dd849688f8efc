"""Frames of many sources into batches: one reader thread and one queue per source.

Each source is read on its own thread into its own bounded queue, so a slow or stalled
camera never holds up the others, and a stop request is noticed while a source blocks.
The queue's *frame policy* decides what happens when the pipeline falls behind:

- ``latest`` (default for live sources): the queue holds one frame; a newer frame replaces
  a waiting one, which is dropped and counted. Frame age stays bounded whatever the
  processing speed: a frame waits at most for the batch in flight.
- ``all`` (default for files): the queue holds ``read_ahead_frames`` frames and the reader
  waits for room; every frame is processed, as fast as the pipeline goes.

The :class:`Batcher` takes frames round-robin from the queues (a fast source cannot starve
a slow one) into batches of up to ``batch_size`` frames; an incomplete batch goes after
``max_wait_ms``. Frames of one source stay in order. Besides batches it yields markers, in
order with the frames of their source: :class:`SegmentStarted` / :class:`SegmentEnded`
from supervised (reconnecting) sources and :class:`SourceEnded` when a reader finishes. A
batch never spans a marker, so the pipeline can reset per-source state between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.frame import Batch, Frame, SourceInfo
from engine.sources.base import Feed, SegmentedSource

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a waiting thread re-checks for a stop


@dataclass(frozen=True)
class SegmentStarted:
    """A supervised source (re)connected: segment ``segment`` begins with its next frame."""

    source_id: str
    segment: int
    info: SourceInfo
    event: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentEnded:
    """A supervised source lost its connection; it will reconnect."""

    source_id: str
    segment: int
    reason: str


@dataclass(frozen=True)
class SourceEnded:
    """A source delivered its last frame (``error`` is set when it failed)."""

    source_id: str
    error: BaseException | None = None


Marker = SegmentStarted | SegmentEnded | SourceEnded


class FeedReader:
    """Reads one source on a thread into its queue (see the module docstring).

    Args:
        feed: The source and its frame policy.
        info: What the source's ``open()`` returned.
        condition: Shared with the :class:`Batcher`; guards every queue.
        read_ahead_frames: Queue size under the ``all`` policy.
    """

    def __init__(
        self, feed: Feed, info: SourceInfo, condition: threading.Condition, *, read_ahead_frames: int
    ) -> None:
        self.source = feed.source
        self.source_id = info.source_id
        self.policy = feed.frame_policy or ("latest" if info.live else "all")
        self.capacity = 1 if self.policy == "latest" else max(1, read_ahead_frames)
        self.items: deque[Frame | Marker] = deque()
        self.queued_frames = 0
        self.frames_in = 0
        self.dropped = 0
        self.invalid = 0  # frames without pixels (a broken decoder): never queued
        self.ended = False  # the batcher took this reader's SourceEnded
        self.capped = False  # the batcher took max_frames frames: queue nothing more
        self._condition = condition
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"vistream-reader-{self.source_id}", daemon=True
        )
        if isinstance(self.source, SegmentedSource):  # a supervised source: hear about its segments
            self.source.subscribe(self)

    def start(self) -> None:
        """Start reading."""
        self._thread.start()

    def stop(self) -> None:
        """Stop intake: no more frames are queued, the source is closed (which makes a
        blocked ``frames()`` return). Call outside the condition's lock."""
        self._stopping.set()
        with self._condition:
            self._condition.notify_all()
        try:
            self.source.close()
        except Exception:
            logger.exception("closing source %s failed", self.source_id)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the thread; True when it ended."""
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def discard_frames(self) -> None:
        """Drop every queued frame, keeping markers (caller holds the lock)."""
        self.items = deque(item for item in self.items if not isinstance(item, Frame))
        self.queued_frames = 0
        self._condition.notify_all()

    # -- SegmentListener (called on this reader's thread, from inside frames()) -------------

    def segment_started(self, source_id: str, segment: int, info: SourceInfo, event: dict[str, Any]) -> None:
        """Queue a :class:`SegmentStarted` before the segment's first frame."""
        self._put_marker(SegmentStarted(source_id, segment, info, event))

    def segment_ended(self, source_id: str, segment: int, reason: str) -> None:
        """Queue a :class:`SegmentEnded` after the segment's last frame."""
        self._put_marker(SegmentEnded(source_id, segment, reason))

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for frame in self.source.frames():
                self.frames_in += 1
                problem = _frame_problem(frame)
                if problem is not None:
                    self.invalid += 1
                    if self.invalid == 1:  # once; the count is in the metrics
                        logger.warning(
                            "%s: frame %d %s; dropping such frames", self.source_id, frame.index, problem
                        )
                    continue
                if not self._put_frame(frame):
                    break
        except BaseException as failure:  # handed to the pipeline thread, which decides
            if not self.stopping:  # errors caused by closing the source are not failures
                error = failure
        self._put_marker(SourceEnded(self.source_id, error))

    def _put_frame(self, frame: Frame) -> bool:
        with self._condition:
            if self.policy == "latest":
                while self.queued_frames >= self.capacity:
                    self._drop_oldest_frame()
            else:
                while self.queued_frames >= self.capacity and not self.stopping:
                    self._condition.wait(_POLL_S)
            if self.stopping or self.capped:
                return False
            self.items.append(frame)
            self.queued_frames += 1
            self._condition.notify_all()
        return True

    def _drop_oldest_frame(self) -> None:
        for position, item in enumerate(self.items):
            if isinstance(item, Frame):
                del self.items[position]
                self.queued_frames -= 1
                self.dropped += 1
                logger.debug("%s: dropped stale frame %d", self.source_id, item.index)
                return

    def _put_marker(self, marker: Marker) -> None:
        with self._condition:
            self.items.append(marker)
            self._condition.notify_all()


def _frame_problem(frame: Frame) -> str | None:
    """Why a frame cannot be processed (no picture, zero size), or None when it can."""
    shape = getattr(frame.image, "shape", None)
    if shape is None or len(shape) != 3:
        return f"has no H×W×3 picture (shape {shape})"
    if 0 in tuple(shape):
        return f"is empty ({'×'.join(str(n) for n in shape)})"
    return None


class Batcher:
    """Yields batches and markers from the readers (see the module docstring).

    Args:
        readers: One per source, not started yet.
        condition: The readers' shared condition.
        batch_size: Most frames per batch.
        max_wait_ms: How long an incomplete batch waits for more frames.
        max_frames: Frames taken per source before that source is stopped; None for all.
        stop: Set to stop intake; what is queued is still delivered for ``drain_timeout_s``.
        drain_timeout_s: After a stop, how long queued frames are still delivered.
        clock: Seconds, monotonic; what ``max_wait_ms`` and the drain timeout are measured
            on (tests give a clock they control).
    """

    def __init__(
        self,
        readers: Sequence[FeedReader],
        condition: threading.Condition,
        *,
        batch_size: int,
        max_wait_ms: float,
        max_frames: int | None,
        stop: threading.Event,
        drain_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.readers = list(readers)
        self._clock = clock
        self._condition = condition
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_frames = max_frames
        self._stop = stop
        self._drain_timeout_s = drain_timeout_s
        self._drain_deadline_s: float | None = None
        self._taken: dict[str, int] = {reader.source_id: 0 for reader in self.readers}
        self._to_stop: list[FeedReader] = []
        self._next_reader = 0

    def start(self) -> None:
        """Start every reader thread."""
        for reader in self.readers:
            reader.start()

    def close(self, join_timeout_s: float = 5.0) -> None:
        """Stop every reader and wait for the threads (a source that hangs is left behind)."""
        for reader in self.readers:
            reader.stop()
        deadline = time.monotonic() + join_timeout_s
        for reader in self.readers:
            if not reader.join(max(0.0, deadline - time.monotonic())):
                logger.warning(
                    "source %s did not stop within %.0f s; leaving its reader thread behind",
                    reader.source_id,
                    join_timeout_s,
                )

    def __iter__(self) -> Iterator[Batch | Marker]:
        while True:
            item = self._next()
            if item is None:
                return
            yield item

    def _next(self) -> Batch | Marker | None:
        frames: list[Frame] = []
        first_frame_s: float | None = None
        while True:
            self._stop_requested_readers()
            with self._condition:
                if self._drain_deadline_s is not None and self._clock() > self._drain_deadline_s:
                    if frames:
                        return Batch(frames)
                    self._discard_all("the drain timeout passed")
                    return None
                marker = self._gather(frames)
                if marker is not None:
                    return marker
                if len(frames) >= self.batch_size or (frames and self._blocked_by_marker()):
                    return Batch(frames)
                if all(reader.ended for reader in self.readers):
                    return Batch(frames) if frames else None
                now_s = self._clock()
                wait_s = _POLL_S
                if frames:
                    first_frame_s = first_frame_s or now_s
                    wait_s = first_frame_s + self.max_wait_s - now_s
                    if wait_s <= 0 or self._no_more_frames_soon(frames):
                        return Batch(frames)
                self._condition.wait(min(wait_s, _POLL_S))

    def _gather(self, frames: list[Frame]) -> Marker | None:
        """Move queued frames round-robin into ``frames``; return a marker that is next in
        line when ``frames`` is empty (with frames gathered, the marker waits its turn)."""
        readers = self.readers
        progressed = True
        while progressed and len(frames) < self.batch_size:
            progressed = False
            for offset in range(len(readers)):
                reader = readers[(self._next_reader + offset) % len(readers)]
                if not reader.items or len(frames) >= self.batch_size:
                    continue
                head = reader.items[0]
                if not isinstance(head, Frame):
                    if frames:
                        continue
                    reader.items.popleft()
                    if isinstance(head, SourceEnded):
                        reader.ended = True
                    self._next_reader = (self._next_reader + offset + 1) % len(readers)
                    return head
                reader.items.popleft()
                reader.queued_frames -= 1
                self._condition.notify_all()  # room in an `all` queue
                frames.append(head)
                progressed = True
                self._taken[reader.source_id] += 1
                if self.max_frames is not None and self._taken[reader.source_id] >= self.max_frames:
                    reader.capped = True
                    reader.discard_frames()
                    self._to_stop.append(reader)
            self._next_reader = (self._next_reader + 1) % len(readers)
        return None

    def _blocked_by_marker(self) -> bool:
        return any(reader.items and not isinstance(reader.items[0], Frame) for reader in self.readers)

    def _no_more_frames_soon(self, frames: list[Frame]) -> bool:
        """True when no reader can add a frame to the batch soon: each is stopping or ended,
        or is a live (``latest``) reader whose frame is already in it, whose next frame
        comes a camera frame period later (33 ms at 30 fps, more than ``max_wait_ms``).
        So one live camera's frames never wait for a batch to fill."""
        in_batch = {frame.source_id for frame in frames}
        return all(
            reader.ended
            or reader.stopping
            or reader.capped
            or (reader.policy == "latest" and reader.source_id in in_batch)
            for reader in self.readers
        )

    def _stop_requested_readers(self) -> None:
        """Stop readers that reached ``max_frames``, or all of them on a stop request
        (outside the lock: closing a source may take a moment)."""
        if self._stop.is_set() and self._drain_deadline_s is None:
            self._drain_deadline_s = self._clock() + self._drain_timeout_s
            self._to_stop.extend(reader for reader in self.readers if not reader.stopping)
        while self._to_stop:
            reader = self._to_stop.pop()
            if not reader.stopping:
                reader.stop()

    def _discard_all(self, why: str) -> None:
        left = sum(reader.queued_frames for reader in self.readers)
        if left:
            logger.warning("%d queued frames were not processed: %s", left, why)
        for reader in self.readers:
            reader.discard_frames()
