"""Stream configurations, the pipeline catalog and the SQLite registry (no worker, no HTTP)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.serve.registry import StreamRegistry
from engine.serve.streams import (
    PipelineCatalog,
    StreamConfig,
    calibration_stages,
    pipeline_calibration,
    public_view,
    validate_stream,
    with_calibration,
)
from tests.serve.helpers_serve import write_pipelines


@pytest.fixture
def catalog(tmp_path: Path) -> PipelineCatalog:
    write_pipelines(tmp_path)
    return PipelineCatalog(tmp_path)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            {"name": "cam1", "uri": "test://", "pipeline": "no_such"},
            "unknown pipeline 'no_such'; expected one of",
        ),
        ({"name": "cam1", "uri": "test://?fps=0", "pipeline": "plain"}, "'fps' must be a positive number"),
        ({"name": "cam1", "uri": "ftp://x/y", "pipeline": "plain"}, "unsupported source URI scheme 'ftp'"),
        ({"name": "bad name", "uri": "test://", "pipeline": "plain"}, "stream name must be"),
        (
            {"name": "cam1", "uri": "test://", "pipeline": "plain", "source": {"fps": 3}},
            "unknown source option",
        ),
        (
            {"name": "cam1", "uri": "test://", "pipeline": "plain", "calibration": "/tmp/x.yaml"},
            "has no stage that takes a calibration",
        ),
        ({"name": "cam1", "pipeline": "plain"}, "missing 'uri'"),
        (
            {"name": "cam1", "uri": "test://", "pipeline": "plain", "publish": ["kafka://u:secret@k:9092"]},
            "unknown scheme 'kafka'",
        ),
        ({"name": "cam1", "uri": "test://", "pipeline": "plain", "publish": ["nats://host"]}, "HOST:PORT"),
        ({"name": "cam1", "uri": "test://", "pipeline": "plain", "publish": "nats://h:1"}, "list of broker"),
        (
            {"name": "cam1", "uri": "test://", "pipeline": "plain", "publish": ["nats://h:1", "nats://h:1"]},
            "given twice",
        ),
        (
            {
                "name": "cam1",
                "uri": "rtsp://u:secret@cam.local/s",
                "pipeline": "plain",
                "source": {"reconnect": 1},
            },
            "expected bool",
        ),
    ],
)
def test_invalid_streams_are_refused_with_one_line(
    catalog: PipelineCatalog, document: dict, reason: str
) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        validate_stream(document, catalog)
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message and "secret" not in message


def test_valid_stream_and_its_public_view_masks_the_password(catalog: PipelineCatalog) -> None:
    config = validate_stream(
        {"name": "gate", "uri": "rtsp://admin:s3cret@10.0.0.5:554/s1", "pipeline": "light", "source": {}},
        catalog,
    )
    assert config.source_spec().id == "gate" and config.source_spec().reconnect is not None
    view = public_view(config)
    assert view["uri"] == "rtsp://admin:***@10.0.0.5:554/s1"
    assert "s3cret" not in repr(config) and "s3cret" not in str(view)
    assert config.to_dict()["uri"].endswith("s3cret@10.0.0.5:554/s1")  # stored as given


def test_publish_urls_are_masked_in_the_public_view(catalog: PipelineCatalog) -> None:
    config = validate_stream(
        {"name": "gate", "uri": "test://", "pipeline": "plain", "publish": ["nats://bot:s3cret@broker:4222"]},
        catalog,
    )
    assert public_view(config)["publish"] == ["nats://bot:***@broker:4222"]
    assert "s3cret" not in repr(config)
    assert config.to_dict()["publish"] == ["nats://bot:s3cret@broker:4222"]


def test_catalog_lists_shipped_and_own_pipelines_and_finds_calibrated_stages(
    catalog: PipelineCatalog,
) -> None:
    names = catalog.names()
    assert {"default", "traffic", "light", "plain"} <= set(names)
    traffic = catalog.load("traffic")
    assert calibration_stages(traffic) == ["speed", "grid"]
    assert calibration_stages(catalog.load("plain")) == []
    assert (
        pipeline_calibration(traffic) is not None
        and pipeline_calibration(traffic).name == "highway_overpass.yaml"
    )
    moved = with_calibration(traffic, Path("/data/cam.yaml"))
    assert [
        stage.arguments.get("calibration") for stage in moved.stages if stage.name in ("speed", "grid")
    ] == [Path("/data/cam.yaml")] * 2
    assert traffic.stages[2].arguments["calibration"] != Path("/data/cam.yaml")  # the original is unchanged


def test_registry_persists_streams_in_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "data" / "streams.db"
    registry = StreamRegistry(path)
    first = StreamConfig(name="a", uri="rtsp://u:p@h/s", pipeline="default")
    assert registry.add(first)
    assert not registry.add(StreamConfig(name="a", uri="test://"))  # names are unique
    assert registry.add(
        StreamConfig(name="b", uri="test://", pipeline="light", source={"frame_policy": "latest"})
    )
    assert registry.update(StreamConfig(name="b", uri="test://?fps=5", pipeline="light"))
    assert not registry.update(StreamConfig(name="zz", uri="test://"))
    registry.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # rows hold camera passwords

    again = StreamRegistry(path)
    assert [config.name for config in again.list()] == ["a", "b"]
    assert again.get("a") == first
    assert again.get("b") is not None and again.get("b").uri == "test://?fps=5"
    assert again.delete("a") and not again.delete("a")
    assert again.get("a") is None
    again.close()
    with sqlite3.connect(path) as db:  # plain SQLite: inspectable with the sqlite3 tool
        assert db.execute("SELECT name FROM streams").fetchall() == [("b",)]
