"""The batcher on its own: round robin, frame policies, segment markers, max_wait on a clock
the test controls (no test here depends on how fast the machine is)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from engine.batching import Batcher, FeedReader, SegmentEnded, SegmentStarted, SourceEnded
from engine.frame import Batch, Frame, SourceInfo
from engine.sources.base import Feed
from tests.helpers import ListSource, make_frame


def _reader(
    source_id: str,
    condition: threading.Condition,
    *,
    live: bool = False,
    policy: str | None = None,
    read_ahead: int = 100,
) -> FeedReader:
    info = SourceInfo(source_id=source_id, uri="memory://", width=64, height=48, fps=25.0, live=live)
    return FeedReader(
        Feed(ListSource(0, source_id=source_id), policy), info, condition, read_ahead_frames=read_ahead
    )


def _queue(reader: FeedReader, frames: int, *, end: bool = True) -> None:
    """Queue frames (and the end marker) as the reader thread would, on this thread."""
    for index in range(frames):
        assert reader._put_frame(make_frame(index, source_id=reader.source_id))
    if end:
        reader._put_marker(SourceEnded(reader.source_id))


def _batcher(
    readers: list[FeedReader],
    condition: threading.Condition,
    *,
    batch_size: int,
    max_wait_ms: float = 1e6,
    max_frames: int | None = None,
    clock: object = None,
) -> Batcher:
    options = {} if clock is None else {"clock": clock}
    return Batcher(
        readers,
        condition,
        batch_size=batch_size,
        max_wait_ms=max_wait_ms,
        max_frames=max_frames,
        stop=threading.Event(),
        drain_timeout_s=10.0,
        **options,
    )


def _batches(batcher: Batcher) -> list[Batch]:
    return [item for item in batcher if isinstance(item, Batch)]


def test_frames_are_taken_round_robin_so_no_source_starves_another() -> None:
    condition = threading.Condition()
    readers = [_reader(name, condition) for name in ("a", "b")]
    _queue(readers[0], 6)
    _queue(readers[1], 2)
    batches = _batches(_batcher(readers, condition, batch_size=2))
    sources = [sorted(frame.source_id for frame in batch) for batch in batches]
    assert sources[:2] == [["a", "b"], ["a", "b"]]  # b's two frames are not left for last
    assert [frame.index for batch in batches for frame in batch if frame.source_id == "a"] == list(range(6))


@pytest.mark.parametrize(
    ("live", "policy", "expected"),
    [
        (True, None, "latest"),
        (False, None, "all"),
        (True, "all", "all"),
        (False, "latest", "latest"),
    ],
)
def test_the_frame_policy_defaults_by_liveness(live: bool, policy: str | None, expected: str) -> None:
    reader = _reader("cam", threading.Condition(), live=live, policy=policy, read_ahead=8)
    assert reader.policy == expected
    assert reader.capacity == (1 if expected == "latest" else 8)


def test_latest_keeps_only_the_newest_frame_and_counts_the_dropped() -> None:
    reader = _reader("cam", threading.Condition(), live=True)
    _queue(reader, 5, end=False)
    queued = [item for item in reader.items if isinstance(item, Frame)]
    assert [frame.index for frame in queued] == [4]
    assert reader.dropped == 4


def test_all_never_queues_more_than_read_ahead() -> None:
    condition = threading.Condition()
    reader = _reader("file", condition, read_ahead=3)
    _queue(reader, 3, end=False)
    assert reader.queued_frames == 3
    reader.stop()  # a full `all` queue makes the reader wait; stopping releases it
    assert not reader._put_frame(make_frame(3, source_id="file"))
    assert reader.queued_frames == 3 and reader.dropped == 0


def test_a_batch_never_spans_a_segment_marker() -> None:
    condition = threading.Condition()
    reader = _reader("cam", condition)
    info = SourceInfo(source_id="cam", uri="memory://", width=64, height=48, fps=25.0, live=True)
    _queue(reader, 3, end=False)
    reader.segment_ended("cam", 1, "lost")
    reader.segment_started("cam", 2, info, {"type": "source_reconnected"})
    _queue(reader, 2)
    items = list(_batcher([reader], condition, batch_size=4))
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["Batch", "SegmentEnded", "SegmentStarted", "Batch", "SourceEnded"]
    assert [len(item) for item in items if isinstance(item, Batch)] == [3, 2]
    assert isinstance(items[1], SegmentEnded) and isinstance(items[2], SegmentStarted)


def test_max_frames_caps_each_source_and_drops_the_rest_of_its_queue() -> None:
    condition = threading.Condition()
    readers = [_reader(name, condition) for name in ("a", "b")]
    _queue(readers[0], 10)
    _queue(readers[1], 10)
    batches = _batches(_batcher(readers, condition, batch_size=3, max_frames=4))
    taken = [frame.source_id for batch in batches for frame in batch]
    assert taken.count("a") == 4 and taken.count("b") == 4


class _GatedSource(ListSource):
    """Yields a frame each time the test releases one."""

    def __init__(self, frame_count: int) -> None:
        super().__init__(frame_count, source_id="cam", live=True)
        self.release = threading.Semaphore(0)

    def frames(self) -> Iterator[Frame]:
        for index in range(self.frame_count):
            while not self.release.acquire(timeout=0.05):
                if self.closed.is_set():
                    return
            yield make_frame(index, source_id=self.source_id)


class _StepClock:
    """A clock that moves by ``step_s`` each time it is read (0: time stands still)."""

    def __init__(self, step_s: float) -> None:
        self.now_s = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        self.now_s += self.step_s
        return self.now_s


def _gated_run(
    batch_size: int,
    max_wait_ms: float,
    clock: _StepClock,
    *,
    release_per_batch: int,
    frames: int,
    policy: str = "all",
) -> list[int]:
    condition = threading.Condition()
    source = _GatedSource(frames)
    info = source.open()
    reader = FeedReader(Feed(source, policy), info, condition, read_ahead_frames=frames)
    batcher = _batcher([reader], condition, batch_size=batch_size, max_wait_ms=max_wait_ms, clock=clock)
    for _ in range(release_per_batch):
        source.release.release()
    batcher.start()
    sizes = []
    try:
        for item in batcher:
            if isinstance(item, Batch):
                sizes.append(len(item))
                for _ in range(release_per_batch):
                    source.release.release()
    finally:
        batcher.close()
    return sizes


def test_an_incomplete_batch_goes_once_max_wait_has_passed_on_the_clock() -> None:
    # One frame is released per batch: without max_wait the batcher would wait for a second
    # frame forever. The clock moves 1 s per reading, far past 5 ms.
    sizes = _gated_run(batch_size=4, max_wait_ms=5, clock=_StepClock(1.0), release_per_batch=1, frames=6)
    assert sizes == [1] * 6


def test_an_incomplete_batch_waits_while_the_clock_stands_still() -> None:
    # Frames come whenever the machine delivers them; with time standing still, only a full
    # batch (or the end of the source) sends one.
    sizes = _gated_run(batch_size=4, max_wait_ms=5, clock=_StepClock(0.0), release_per_batch=8, frames=8)
    assert sizes == [4, 4]


def test_a_live_cameras_frame_does_not_wait_for_a_batch_it_alone_would_fill() -> None:
    # The camera's next frame is a frame period away: with its frame in the batch, there is
    # nothing to wait for, even while time stands still (max_wait never passes).
    sizes = _gated_run(
        batch_size=3, max_wait_ms=5, clock=_StepClock(0.0), release_per_batch=1, frames=4, policy="latest"
    )
    assert sizes == [1] * 4
