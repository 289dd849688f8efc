"""Pipeline YAML: binding to constructor signatures, and errors that name the place."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import find_pipeline, load_pipeline, parse_pipeline
from engine.errors import ConfigError
from engine.stage import BaseStage


class Configurable(BaseStage):
    """A stage with one argument of each kind the loader converts."""

    def __init__(
        self,
        *,
        model: Path,
        threshold: float = 0.5,
        classes: list[str] | None = None,
        count: int = 1,
        enabled: bool = True,
        label: str = "x",
        calibration: Path | None = None,
    ) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.threshold = threshold
        self.classes = classes
        self.count = count
        self.enabled = enabled
        self.label = label
        self.calibration = calibration


STAGE = f"{__name__}:Configurable"


def _parse(stages: list[dict[str, object]], **top: object) -> object:
    return parse_pipeline({"stages": stages, **top}, config_dir=Path("/pipelines"))


def test_arguments_are_bound_converted_and_paths_resolved_against_the_yaml() -> None:
    spec = _parse([{"stage": STAGE, "model": "models/m.onnx", "threshold": 1, "classes": ["car"]}])
    stage = spec.stages[0].build()  # type: ignore[attr-defined]
    assert stage.model == Path("/pipelines/models/m.onnx")
    assert stage.threshold == 1.0 and isinstance(stage.threshold, float)
    assert stage.classes == ["car"]
    assert stage.calibration is None


def test_absolute_paths_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_MODELS", "/opt/models")
    spec = _parse([{"stage": STAGE, "model": "${MY_MODELS}/m.onnx", "calibration": "${NOPE:-c.yaml}"}])
    assert spec.stages[0].arguments["model"] == Path("/opt/models/m.onnx")  # type: ignore[attr-defined]
    assert spec.stages[0].arguments["calibration"] == Path("/pipelines/c.yaml")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [{"stage": STAGE, "model": "m", "calib": 1}],
            r"stages\[0\] \(.*Configurable\): unexpected argument 'calib'",
        ),
        ([{"stage": STAGE}], r"stages\[0\] .*missing required argument 'model'"),
        ([{"stage": STAGE, "model": "m", "threshold": "high"}], r"argument 'threshold': expected a number"),
        ([{"stage": STAGE, "model": "m", "count": 1.5}], r"argument 'count': expected an integer"),
        ([{"stage": STAGE, "model": "m", "enabled": "yes"}], r"argument 'enabled': expected true or false"),
        ([{"stage": STAGE, "model": "m", "classes": "car"}], r"argument 'classes': expected a list"),
        ([{"stage": STAGE, "model": "${UNSET_VARIABLE_X}"}], r"'UNSET_VARIABLE_X' is not set"),
        (
            [{"stage": "no_such_stage"}],
            r"stages\[0\] \(no_such_stage\): unknown stage 'no_such_stage'; "
            r"installed stages: .*detect.*track",
        ),
        ([{"stage": "no_such_module:Stage"}], r"cannot import module 'no_such_module'"),
        ([{"model": "m"}], r"stages\[0\]: expected a mapping with a 'stage' key"),
        ([], r"'stages' must be a non-empty list"),
        ([{"stage": STAGE, "model": "m"}, {"stage": STAGE, "model": "m"}], r"used twice"),
    ],
)
def test_errors_name_the_place(stages: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(stages)


def test_constructor_validation_errors_name_the_place() -> None:
    spec = _parse([{"stage": STAGE, "name": "det", "model": "m", "threshold": 3}])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(det\): threshold must be in"):
        spec.stages[0].build()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"batch_size": 0}, "batch_size: expected an integer >= 1 and <= 256"),
        ({"on_error": "ignore"}, "on_error: expected one of fail, skip"),
        ({"device": "gpu"}, "device: expected 'cpu', 'cuda' or 'cuda:N'"),
        ({"cameras": []}, "unknown key 'cameras'"),
        ({"sources": []}, "'sources' must be a non-empty list"),
        ({"source": "a.mp4", "sources": ["b.mp4"]}, "either 'source' or 'sources'"),
        ({"max_wait_ms": -1}, "max_wait_ms: expected a number >= 0"),
    ],
)
def test_top_level_errors(top: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse([{"stage": STAGE, "model": "m"}], **top)


def test_malformed_yaml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - stage: detect\n    model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_pipeline(str(path))


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_pipeline(str(path))


def test_shipped_pipelines_are_found_by_name_and_all_validate() -> None:
    assert find_pipeline("default").name == "default.yaml"
    with pytest.raises(ConfigError, match="neither a file nor a shipped pipeline"):
        find_pipeline("no-such-pipeline")
    for path in find_pipeline("default").parent.glob("*.yaml"):
        spec = load_pipeline(str(path))
        assert spec.stages, path
