"""Pipeline ``workers``: leading concurrent stages run ahead on several threads, the rest in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.config import PipelineSettings, parse_pipeline
from engine.errors import ConfigError
from engine.frame import Batch, Frame
from engine.pipeline import Pipeline
from engine.sources import open_source
from engine.stage import BaseStage, Context, NamedStage
from plugins.detect import YoloDetector
from tests.conftest import shared_path
from tests.helpers import ListSource, MemorySink, ProbeStage, frame_indices


class SlowConcurrentStage(BaseStage):
    """A stateless stage that takes longer on even frames, so calls finish out of order."""

    concurrent = True

    def __init__(self, *, fail_on_frame: int | None = None) -> None:
        self.fail_on_frame = fail_on_frame
        self.threads: set[str] = set()
        self.workers_seen = 0
        self._running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def open(self, context: Context) -> None:
        self.workers_seen = context.workers

    def __call__(self, batch: Batch) -> Batch:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.004 if batch[0].index % 2 == 0 else 0.001)
            for frame in batch:
                if frame.index == self.fail_on_frame:
                    raise ValueError(f"broke on frame {frame.index}")
                frame.events.append({"ahead": threading.current_thread().name})
            return batch
        finally:
            with self._lock:
                self._running -= 1


class OrderStage(BaseStage):
    """Records the order frames and stream ends reach it, and the thread it runs on."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.threads: set[str] = set()

    def __call__(self, batch: Batch) -> Batch:
        self.threads.add(threading.current_thread().name)
        self.journal.extend(f"{frame.source_id} {frame.index}" for frame in batch)
        return batch

    def end_of_stream(self, source_id: str) -> None:
        self.journal.append(f"eos {source_id}")


def _pipeline(*stages: BaseStage, workers: int = 2, **options: object) -> Pipeline:
    named = [NamedStage(name=f"s{position}", stage=stage) for position, stage in enumerate(stages)]
    return Pipeline(named, PipelineSettings(workers=workers, **options))  # type: ignore[arg-type]


def test_frames_reach_later_stages_and_sinks_in_order() -> None:
    ahead, journal = SlowConcurrentStage(), []
    ordered = OrderStage(journal)
    sink = MemorySink()
    pipeline = _pipeline(ahead, ordered)
    assert [named.stage for named in pipeline.ahead_stages()] == [ahead]
    metrics = pipeline.run(ListSource(60), [sink])
    assert frame_indices(sink.frames) == list(range(60))
    assert journal == [f"cam0 {index}" for index in range(60)] + ["eos cam0"]
    assert ahead.workers_seen == 2
    assert ahead.most_at_once == 2, "the concurrent stage never ran on two batches at once"
    assert len(ahead.threads) == 2 and threading.current_thread().name not in ahead.threads
    assert ordered.threads == {threading.current_thread().name}
    # Stage timings are recorded for every call, wherever it ran.
    assert metrics.stage_latency_ms["s0"].count == 60 and metrics.stage_latency_ms["s1"].count == 60
    assert pipeline.stop_requested is False


def test_one_worker_or_no_leading_concurrent_stage_runs_nothing_ahead() -> None:
    assert _pipeline(SlowConcurrentStage(), workers=1).ahead_stages() == []
    # Only *leading* concurrent stages run ahead: order matters for what follows. A concurrent
    # stage behind a stateful one is called one batch at a time and is told so.
    behind = SlowConcurrentStage()
    pipeline = _pipeline(ProbeStage(), behind)
    assert pipeline.ahead_stages() == []
    pipeline.run(ListSource(6), [MemorySink()])
    assert behind.workers_seen == 1 and behind.most_at_once == 1
    journal: list[str] = []
    sink = MemorySink()
    _pipeline(ProbeStage(journal=journal), OrderStage(journal), workers=3).run(ListSource(5), [sink])
    assert frame_indices(sink.frames) == [0, 1, 2, 3, 4]


def test_source_ends_stay_after_their_frames_with_several_sources() -> None:
    journal: list[str] = []
    pipeline = _pipeline(SlowConcurrentStage(), OrderStage(journal), batch_size=2, max_wait_ms=1)
    pipeline.run([ListSource(7, source_id="a"), ListSource(30, source_id="b")], [MemorySink()])
    for source_id, count in (("a", 7), ("b", 30)):
        mine = [entry for entry in journal if entry.split()[0] == source_id or entry == f"eos {source_id}"]
        assert mine == [f"{source_id} {index}" for index in range(count)] + [f"eos {source_id}"]


def test_a_failing_concurrent_stage_stops_the_run_and_keeps_earlier_frames() -> None:
    sink = MemorySink()
    pipeline = _pipeline(SlowConcurrentStage(fail_on_frame=20), OrderStage([]))
    threads_before = threading.active_count()
    with pytest.raises(ValueError, match="broke on frame 20"):
        pipeline.run(ListSource(200), [sink])
    assert frame_indices(sink.frames) == list(range(20))
    assert sink.closed
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads_before, "worker or feeder threads were left behind"


def test_skip_policy_with_a_failing_concurrent_stage() -> None:
    sink = MemorySink()
    later = ProbeStage(label="later")
    pipeline = _pipeline(SlowConcurrentStage(fail_on_frame=3), later, on_error="skip")
    metrics = pipeline.run(ListSource(10), [sink])
    assert frame_indices(sink.frames) == list(range(10))
    skipped = [frame.index for frame in sink.frames if frame.skipped_reason]
    assert skipped == [3]
    assert "later" not in sink.frames[3].layers and "later" in sink.frames[4].layers
    assert metrics.skipped_frames == 1


def test_a_stop_request_ends_the_run_cleanly() -> None:
    sink = MemorySink()
    pipeline = _pipeline(SlowConcurrentStage(), OrderStage([]))

    def stop_after_some(batch: Batch) -> None:
        if batch[0].index == 30:
            pipeline.request_stop()

    started = time.monotonic()
    pipeline.run(ListSource(100_000), [sink], on_batch=stop_after_some)
    assert time.monotonic() - started < 10
    assert 31 <= len(sink.frames) < 100_000
    assert frame_indices(sink.frames) == list(range(len(sink.frames)))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "expected a positive integer"),
        ("two", "expected a positive integer"),
        (True, "expected a positive integer"),
    ],
)
def test_workers_is_validated(value: object, match: str) -> None:
    document = {"workers": value, "stages": [{"stage": "track"}]}
    with pytest.raises(ConfigError, match=f"workers: {match}"):
        parse_pipeline(document, config_dir=Path("."))
    with pytest.raises(ConfigError, match="workers"):
        Pipeline([], PipelineSettings(workers=0))


def test_workers_is_read_from_yaml() -> None:
    spec = parse_pipeline({"workers": 3, "stages": [{"stage": "track"}]}, config_dir=Path("."))
    assert spec.settings.workers == 3
    assert Pipeline.from_spec(spec).settings.workers == 3


# --------------------------------------------------------------------------- real model


class _NotThreadSafe:
    """Wraps a real backend, says it is not thread-safe, and counts calls that overlap."""

    thread_safe = False

    def __init__(self, backend: object) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def run(self, inputs: dict[str, object]) -> dict[str, object]:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            return self._backend.run(inputs)  # type: ignore[attr-defined]
        finally:
            with self._lock:
                self._running -= 1


def _run_detect(video: Path, workers: int, frames: int, batch_size: int = 1) -> tuple[list[Frame], Pipeline]:
    detector = YoloDetector(model=shared_path("models/yolo11n_fp32_320.onnx"))
    sink = MemorySink()
    settings = PipelineSettings(workers=workers, batch_size=batch_size)
    pipeline = Pipeline([NamedStage("detect", detector)], settings)
    pipeline.run(open_source(str(video), source_id="highway"), [sink], max_frames=frames)
    return sink.frames, pipeline


@pytest.mark.parametrize("batch_size", [1, 3])  # 3: the shipped pipelines' setting
def test_detect_on_two_workers_gives_the_same_detections(highway_video: Path, batch_size: int) -> None:
    serial, _ = _run_detect(highway_video, workers=1, frames=40)
    ahead, pipeline = _run_detect(highway_video, workers=2, frames=40, batch_size=batch_size)
    assert [named.name for named in pipeline.ahead_stages()] == ["detect"]
    assert frame_indices(ahead) == frame_indices(serial) == list(range(40))
    for one, other in zip(serial, ahead, strict=True):
        a, b = one.layers["objects"], other.layers["objects"]
        np.testing.assert_array_equal(a.class_id, b.class_id)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
    assert sum(len(frame.layers["objects"]) for frame in ahead) > 40  # cars were found


def test_a_backend_that_is_not_thread_safe_is_called_one_at_a_time(
    highway_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugins.detect

    wrapped: list[_NotThreadSafe] = []
    real_load = plugins.detect.load_backend

    def load_not_thread_safe(*args: object, **kwargs: object) -> _NotThreadSafe:
        wrapped.append(_NotThreadSafe(real_load(*args, **kwargs)))
        return wrapped[-1]

    monkeypatch.setattr(plugins.detect, "load_backend", load_not_thread_safe)
    frames, _ = _run_detect(highway_video, workers=2, frames=30)
    assert frame_indices(frames) == list(range(30))
    assert wrapped[0].most_at_once == 1
