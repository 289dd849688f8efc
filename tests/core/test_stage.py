"""The declared stage contract: defaults, what the pipeline reads, and what the registry refuses."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from engine.errors import PluginError
from engine.frame import Batch
from engine.pipeline import Pipeline
from engine.registry import resolve_stage
from engine.sinks.outputs import tracked_layers
from engine.stage import STAGE_MEMBERS, BaseStage, Context, NamedStage, Stage, missing_members
from tests.helpers import ListSource


class _Plain(BaseStage):
    def __call__(self, batch: Batch) -> Batch:
        return batch


class _OwnTracker(BaseStage):
    """A third-party tracker: it only declares the layer it tracks."""

    def __init__(self, layer: str = "objects") -> None:
        self.tracked_layers = (layer,)

    def __call__(self, batch: Batch) -> Batch:
        return batch


class _Reporting(BaseStage):
    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, batch: Batch) -> Batch:
        self.frames += len(batch)
        return batch

    def summary(self) -> dict[str, Any] | None:
        return {"frames": self.frames}


class _Drawing(_Plain):
    draws: ClassVar[bool] = True


class _NotAStage:
    def __call__(self, batch: Batch) -> Batch:
        return batch


def test_base_stage_declares_every_member_with_a_default() -> None:
    stage = _Plain()
    assert missing_members(_Plain) == []
    assert isinstance(stage, Stage)
    assert (stage.draws, stage.concurrent, stage.tracked_layers, stage.summary()) == (False, False, (), None)
    stage.open(Context())
    stage.end_of_stream("cam")
    stage.close()


def test_a_class_without_the_members_is_named_with_what_it_lacks() -> None:
    assert missing_members(_NotAStage) == [name for name in STAGE_MEMBERS if name != "__call__"]
    with pytest.raises(PluginError, match="lacks draws, concurrent, tracked_layers, open"):
        resolve_stage(f"{__name__}:_NotAStage")


def test_any_tracker_that_declares_its_layer_gets_a_mot_file() -> None:
    pipeline = Pipeline(
        [
            NamedStage("a", _OwnTracker("faces")),
            NamedStage("b", _Plain()),
            NamedStage("c", _OwnTracker("objects")),
            NamedStage("d", _OwnTracker("faces")),
        ]
    )
    assert tracked_layers(pipeline) == ["faces", "objects"]


def test_only_summaries_that_say_something_reach_the_report() -> None:
    reporting = _Reporting()
    pipeline = Pipeline([NamedStage("plain", _Plain()), NamedStage("counted", reporting)])
    pipeline.run(ListSource(4), [])
    assert pipeline.stage_summaries() == {"counted": {"frames": 4}}


def test_drawing_stages_are_left_out_without_video(tmp_path: Any) -> None:
    from engine.config import parse_pipeline

    document = {"stages": [{"stage": f"{__name__}:_Plain"}, {"stage": f"{__name__}:_Drawing"}]}
    spec = parse_pipeline(document, config_dir=tmp_path)
    assert [named.name for named in Pipeline.from_spec(spec, with_drawing=False).stages] == [
        f"{__name__}:_Plain"
    ]
    assert len(Pipeline.from_spec(spec).stages) == 2
