"""Property tests: any input to the config loader, the calibration loader or the URI parser
ends in a result or an :class:`~engine.errors.EngineError`, never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.checks import read_yaml
from engine.config import parse_pipeline
from engine.errors import EngineError
from engine.geometry.calibration import Calibration
from engine.sources.spec import parse_sources
from engine.sources.uri import parse_uri
from tests.conftest import REPO_ROOT

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
STAGES = ["track", "annotate", "speed", "detect", "faces", "emotion", "nope", "tests.helpers:ProbeStage"]
KEYS = [
    "stages",
    "source",
    "sources",
    "device",
    "batch_size",
    "max_wait_ms",
    "workers",
    "on_error",
    "stage_timeout_s",
]


def outcome(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; an EngineError is a fine outcome, any other exception fails the test."""
    try:
        return function(*args, **kwargs)
    except EngineError:
        return None


@pytest.mark.fault(
    "Any text as a pipeline YAML, any document as a pipeline (hypothesis, 300 cases each)",
    "A spec or a ConfigError, never another exception",
)
@FUZZ
@given(text=st.text(max_size=300))
def test_any_yaml_text_loads_or_is_a_config_error(text: str) -> None:
    outcome(read_yaml, text, "fuzz.yaml")


@FUZZ
@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            key: st.one_of(
                values,
                st.lists(
                    st.fixed_dictionaries(
                        {"stage": st.one_of(st.sampled_from(STAGES), values)},
                        optional={"name": values, "layer": values, "calibration": values, "seconds": values},
                    ),
                    max_size=3,
                ),
            )
            for key in KEYS
        },
    )
)
def test_any_pipeline_document_is_a_spec_or_a_config_error(
    document: dict[str, Any], tmp_path_factory: Any
) -> None:
    spec = outcome(parse_pipeline, document, config_dir=REPO_ROOT)
    if spec is not None:
        for stage in spec.stages:
            outcome(stage.build)
    outcome(read_yaml, yaml.safe_dump(document), "fuzz.yaml")


_VALID = yaml.safe_load((REPO_ROOT / "calibrations" / "highway_overpass.yaml").read_text())


@pytest.mark.fault(
    "Any calibration document: every field replaced by any value, any text as the file (hypothesis)",
    "A calibration or a CalibrationError, never another exception (booleans and numeric strings "
    "are not taken for coordinates)",
)
@FUZZ
@given(changes=st.dictionaries(st.sampled_from([*_VALID, "mask", "extra"]), values, max_size=3))
def test_any_calibration_document_is_a_calibration_or_an_error(changes: dict[str, Any]) -> None:
    outcome(Calibration.from_dict, {**_VALID, **changes})


@FUZZ
@given(points=st.lists(st.lists(scalars, min_size=0, max_size=3), max_size=6))
def test_any_points_are_a_calibration_or_an_error(points: list[list[Any]]) -> None:
    calibration = outcome(Calibration.from_dict, {**_VALID, "points": points})
    if calibration is not None:  # accepted: then every coordinate was a real number
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for pair in points for v in pair)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_calibration_file_loads_or_is_an_error(text: str, tmp_path_factory: Any) -> None:
    path: Path = tmp_path_factory.mktemp("calibration") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    outcome(Calibration.load, path)


@pytest.mark.fault(
    "Any string as a source URI or `sources:` entry, `rtsp://` and `test://` prefixed or not (hypothesis)",
    "A parsed URI or a ConfigError, never another exception; a parsed RTSP URI has a host and a "
    "port in range",
)
@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.text(max_size=80).map(lambda rest: "rtsp://" + rest),
        st.text(max_size=80).map(lambda rest: "test://?" + rest),
        st.text(max_size=40).map(lambda rest: "file://" + rest),
    )
)
def test_any_uri_parses_or_is_a_config_error(text: str) -> None:
    parsed = outcome(parse_uri, text)
    if parsed is not None and parsed.kind == "rtsp":
        assert parsed.host and "@" not in parsed.location.split("/")[2]
        assert parsed.password is None or parsed.password not in parsed.display.split("@")[0]


@FUZZ
@given(
    entries=st.lists(
        st.one_of(values, st.fixed_dictionaries({"uri": values}, optional={"id": values})), max_size=3
    )
)
def test_any_sources_list_is_specs_or_a_config_error(entries: list[Any]) -> None:
    outcome(parse_sources, entries)
