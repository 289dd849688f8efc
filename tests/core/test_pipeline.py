"""The pipeline loop: lifecycle order, batching, the error policy, stops and source failures."""

from __future__ import annotations

import pytest

from engine.config import PipelineSettings
from engine.errors import ConfigError, SourceError
from engine.pipeline import Pipeline
from engine.stage import NamedStage
from tests.helpers import ListSource, MemorySink, ProbeStage, frame_indices


def _pipeline(*stages: ProbeStage, **options: object) -> Pipeline:
    return Pipeline([NamedStage(stage.label, stage) for stage in stages], PipelineSettings(**options))  # type: ignore[arg-type]


def test_every_frame_reaches_the_sink_in_order() -> None:
    sink = MemorySink()
    metrics = _pipeline(ProbeStage(label="a")).run(ListSource(10), [sink])
    assert frame_indices(sink.frames) == list(range(10))
    assert all("a" in frame.layers for frame in sink.frames)
    assert sum(metrics.frames_out.values()) == 10
    assert sink.opened and sink.closed and sink.ended == ["cam0"]


@pytest.mark.parametrize(
    ("batch_size", "frames", "expected"),
    [
        (1, 5, [1, 1, 1, 1, 1]),
        (4, 10, [4, 4, 2]),
        (8, 3, [3]),
    ],
)
def test_batches_are_filled_and_the_last_one_is_flushed(
    batch_size: int, frames: int, expected: list[int]
) -> None:
    stage = ProbeStage()
    _pipeline(stage, batch_size=batch_size).run(ListSource(frames), [MemorySink()])
    assert stage.batch_sizes == expected


def test_stages_open_in_order_and_close_in_reverse() -> None:
    journal: list[str] = []
    _pipeline(ProbeStage(label="a", journal=journal), ProbeStage(label="b", journal=journal)).run(
        ListSource(2), []
    )
    assert journal == ["open a", "open b", "eos a cam0", "eos b cam0", "close b", "close a"]


@pytest.mark.fault(
    "A stage fails to open (model missing halfway)",
    "Stages opened before it (and it) are closed in reverse; sources closed",
)
def test_a_failing_open_still_closes_the_stages_opened_before_it_in_reverse() -> None:
    journal: list[str] = []
    source = ListSource(5)
    pipeline = _pipeline(
        ProbeStage(label="a", journal=journal),
        ProbeStage(label="b", journal=journal, fail_open=True),
        ProbeStage(label="c", journal=journal),
    )
    with pytest.raises(RuntimeError, match="b cannot open"):
        pipeline.run(source, [])
    # c never opened; b gets close() to release whatever it allocated before failing
    assert journal == ["open a", "open b", "close b", "close a"]
    assert source.closed.is_set()


def test_fail_policy_stops_but_keeps_what_was_written() -> None:
    sink = MemorySink()
    with pytest.raises(ValueError, match="broke on frame 3"):
        _pipeline(ProbeStage(fail_on_frame=3)).run(ListSource(10), [sink])
    assert frame_indices(sink.frames) == [0, 1, 2]
    assert sink.closed


def test_skip_policy_counts_skipped_frames_and_keeps_going() -> None:
    sink = MemorySink()
    later = ProbeStage(label="later")
    pipeline = _pipeline(ProbeStage(label="first", fail_on_frame=3), later, on_error="skip")
    metrics = pipeline.run(ListSource(6), [sink])
    assert frame_indices(sink.frames) == list(range(6))
    skipped = [frame for frame in sink.frames if frame.skipped_reason]
    assert frame_indices(skipped) == [3]
    assert "later" not in skipped[0].layers  # stages after the failing one did not see it
    assert metrics.skipped_frames == 1
    assert metrics.errors == {"first: ValueError": 1}


def test_max_frames_stops_early() -> None:
    sink = MemorySink()
    _pipeline(ProbeStage(), batch_size=4).run(ListSource(100), [sink], max_frames=10)
    assert frame_indices(sink.frames) == list(range(10))


def test_source_failure_processes_frames_before_it_then_raises() -> None:
    sink = MemorySink()
    with pytest.raises(SourceError, match="broke after 7"):
        _pipeline(ProbeStage(), batch_size=3).run(ListSource(20, fail_after=7), [sink])
    assert frame_indices(sink.frames) == list(range(7))
    assert sink.closed


def test_stop_request_finishes_the_batch_in_flight_and_finalizes() -> None:
    sink = MemorySink()
    pipeline = _pipeline(ProbeStage(), batch_size=2)

    def stop_after_first_batches(batch: object) -> None:
        if len(sink.frames) >= 4:
            pipeline.request_stop()

    pipeline.run(ListSource(1000), [sink], on_batch=stop_after_first_batches)
    assert 4 <= len(sink.frames) < 1000
    assert frame_indices(sink.frames) == list(range(len(sink.frames)))
    assert sink.closed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_invalid_options_are_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _pipeline(ProbeStage(), **options)


def test_latency_is_recorded_per_stage() -> None:
    metrics = _pipeline(ProbeStage(label="a"), ProbeStage(label="b")).run(ListSource(5), [])
    summary = metrics.summary()
    assert set(summary["stage_latency_ms"]) == {"a", "b"}
    assert summary["stage_latency_ms"]["a"]["count"] == 5
    assert summary["end_to_end_latency_ms"]["count"] == 5
