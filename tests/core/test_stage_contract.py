"""What every stage returns is checked, and a stage that hangs is given up on (the watchdog)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from engine.config import PipelineSettings, parse_pipeline
from engine.errors import ConfigError, StageContractError, StageTimeoutError
from engine.frame import Batch
from engine.pipeline import Pipeline
from engine.run_ahead import StageRun, StageWatchdog, run_stages
from engine.stage import BaseStage, NamedStage, check_stage_output
from tests.helpers import ListSource, MemorySink, ProbeStage, make_frame
from tests.helpers_faults import ContractBreaker, HangingStage


def run(
    stage: object, *, on_error: str, batch_size: int = 2, frames: int = 8, **settings: object
) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    pipeline = Pipeline(
        [NamedStage("breaker", stage), NamedStage("probe", ProbeStage())],  # type: ignore[arg-type]
        PipelineSettings(batch_size=batch_size, on_error=on_error, **settings),  # type: ignore[arg-type]
    )
    pipeline.run(ListSource(frames), [sink])
    return pipeline, sink


@pytest.mark.fault(
    "A stage returns fewer frames, more frames (a duplicate), `None`, or its frames reordered",
    "A `StageContractError` naming the stage and what it did (`stage 'breaker' lost 1 of 2 "
    "frames`), handled by `on_error`: under `skip` the frames go on unprocessed, marked and "
    "counted, so no output loses or repeats a frame; under `fail` the run stops with exit 2",
)
@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fewer", "lost 1 of 2 frames (first: cam0 frame 3)"),
        ("more", "added 1 frame(s) (first: cam0 frame 3)"),
        ("none", "returned NoneType, expected the Batch it was given"),
        ("reorder", "reordered its frames"),
    ],
)
def test_a_stage_that_breaks_the_contract_is_an_error_naming_it(mode: str, message: str) -> None:
    pipeline, sink = run(ContractBreaker(mode=mode, on_frame=3), on_error="skip")
    assert [frame.index for frame in sink.frames] == list(range(8))  # nothing lost or doubled
    assert [frame.index for frame in sink.frames if frame.skipped_reason] == [2, 3]
    assert message in (sink.frames[3].skipped_reason or "")
    assert pipeline.metrics.errors == {"breaker: StageContractError": 1}
    with pytest.raises(StageContractError, match=f"stage 'breaker' failed on cam0 frame 2: .*{message[:12]}"):
        run(ContractBreaker(mode=mode, on_frame=3), on_error="fail")


@pytest.mark.fault(
    "A stage takes frames out on purpose (`batch.drop(frame, reason)`)",
    "Allowed: the frames are missing from every output, counted per `stage: reason` in "
    "`dropped_by_stage` of the summary; later stages never see them",
)
def test_a_declared_drop_is_counted_and_reported() -> None:
    pipeline, sink = run(ContractBreaker(mode="drop", on_frame=3, always=True), on_error="fail")
    assert [frame.index for frame in sink.frames] == [0, 1, 2]
    assert pipeline.metrics.summary()["dropped_by_stage"] == {"breaker: too dark": 5}
    assert pipeline.metrics.skipped_frames == 0


def test_check_stage_output_accepts_new_frame_objects_for_the_same_frames() -> None:
    frames = [make_frame(0), make_frame(1)]
    given = [(frame.source_id, frame.index) for frame in frames]
    copies = Batch([make_frame(0), make_frame(1)])
    assert check_stage_output("s", given, copies) is copies
    with pytest.raises(ValueError, match="needs a reason"):
        copies.drop(copies[0], " ")


@pytest.mark.fault(
    "A stage hangs in `__call__` (live source, or `stage_timeout_s` set)",
    "The watchdog (`stage_timeout_s`: `auto` = 30 s for live sources, off for files) gives up "
    "on the call: `StageTimeoutError` under `on_error`; under `skip` the stage is bypassed "
    "(frames marked) until the hung call returns, never entered twice; under `fail` the run "
    "ends with outputs finalized and the hung stage not closed",
)
def test_a_hanging_stage_is_given_up_on_by_the_watchdog() -> None:
    started_s = time.monotonic()
    pipeline, sink = run(HangingStage(on_frame=3), on_error="skip", stage_timeout_s=0.5)
    assert time.monotonic() - started_s < 10
    assert [frame.index for frame in sink.frames] == list(range(8))
    skipped = [frame.index for frame in sink.frames if frame.skipped_reason]
    assert skipped == [2, 3, 4, 5, 6, 7]  # the hung call's batch, then every later one
    assert "did not return within 0.5 s" in (sink.frames[2].skipped_reason or "")
    assert "still in a call that hung" in (sink.frames[4].skipped_reason or "")
    assert pipeline.metrics.errors == {"breaker: StageTimeoutError": 3}
    with pytest.raises(StageTimeoutError, match="stage 'breaker' failed on cam0 frame 2: .*within 0.5 s"):
        run(HangingStage(on_frame=3), on_error="fail", stage_timeout_s=0.5)


def test_the_watchdog_is_on_for_live_sources_and_off_for_files_by_default() -> None:
    settings = PipelineSettings()
    assert settings.stage_timeout_for(live=True) == 30.0
    assert settings.stage_timeout_for(live=False) is None
    assert PipelineSettings(stage_timeout_s="off").stage_timeout_for(live=True) is None
    assert PipelineSettings(stage_timeout_s="2.5").stage_timeout_for(live=False) == 2.5


def test_a_bare_yaml_off_turns_the_watchdog_off(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as false: the documented spelling must still work.
    document = yaml.safe_load("stage_timeout_s: off\nstages:\n  - stage: track\n")
    spec = parse_pipeline(document, config_dir=tmp_path)
    assert spec.settings.stage_timeout_s == "off"
    assert spec.settings.stage_timeout_for(live=True) is None
    with pytest.raises(ConfigError, match="stage_timeout_s"):
        PipelineSettings(stage_timeout_s=True)


class _ThreadRecorder(BaseStage):
    """Notes the thread of every call; sleeps ``sleep_s`` on frame ``slow_frame``."""

    def __init__(self, slow_frame: int = -1, sleep_s: float = 0.0) -> None:
        self.threads: list[int] = []
        self.slow_frame, self.sleep_s = slow_frame, sleep_s

    def __call__(self, batch: Batch) -> Batch:
        self.threads.append(threading.get_ident())
        if any(frame.index == self.slow_frame for frame in batch):
            time.sleep(self.sleep_s)
        return batch


def test_the_watchdog_runs_every_stage_of_a_batch_in_one_hand_over() -> None:
    first, second = _ThreadRecorder(), _ThreadRecorder()
    stages = [NamedStage(name="first", stage=first), NamedStage(name="second", stage=second)]
    run = run_stages(StageRun(Batch([make_frame(0)])), stages, StageWatchdog(5.0))
    assert (
        run.error is None
        and run.stages_done == 2
        and [t.stage_name for t in run.timings] == ["first", "second"]
    )
    assert first.threads == second.threads  # one worker ran both...
    assert first.threads[0] != threading.get_ident()  # ...not the caller


def test_each_stage_of_a_batch_gets_its_own_limit_and_a_hung_one_is_named() -> None:
    watchdog = StageWatchdog(0.3)
    # Each of the two stages takes 0.2 s: together longer than the limit, each within it.
    slow = [NamedStage(name=name, stage=_ThreadRecorder(0, 0.2)) for name in ("a", "b")]
    assert run_stages(StageRun(Batch([make_frame(0)])), slow, watchdog).error is None
    hangs = [
        NamedStage(name="ok", stage=_ThreadRecorder()),
        NamedStage(name="hangs", stage=_ThreadRecorder(0, 1.0)),
    ]
    run = run_stages(StageRun(Batch([make_frame(0)])), hangs, watchdog)
    assert run.failed_stage == "hangs" and isinstance(run.error, StageTimeoutError)
    assert [t.stage_name for t in run.timings] == ["ok", "hangs"] and run.stages_done == 2
    assert watchdog.hung("hangs") and not watchdog.hung("ok")
    later = run_stages(StageRun(Batch([make_frame(1)])), hangs, watchdog)  # not entered again
    assert later.failed_stage == "hangs" and "not entered again" in str(later.error)
    deadline = time.monotonic() + 5
    while watchdog.hung("hangs") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not watchdog.hung("hangs")  # the call returned: the stage is entered again
