"""What a stream of the service is: its validated configuration, and the pipelines it may name.

A stream is one camera (one source) through one pipeline. Its configuration is what the API
accepts, the registry stores and a worker runs::

    {"name": "gate", "uri": "rtsp://user:pass@10.0.0.5/s1", "pipeline": "traffic",
     "source": {"frame_policy": "latest", "stall_timeout_s": 5},   # optional, see engine.sources.spec
     "calibration": null,       # set by the calibration editor: a file under DATA/calibrations
     "record_video": false,     # also write annotated.mp4 (events.jsonl and tracks always)
     "publish": ["nats://127.0.0.1:4222"],   # object events to brokers; null: the service's --publish
     "enabled": true}

The name is also the source id (metric labels, output folders), so it follows the source id
rules. Pipelines are chosen by name only: the shipped ones and the YAML files an operator put
in ``DATA/pipelines`` (a file there wins over a shipped pipeline of the same name). A path
from the API is refused, since a pipeline may import any ``module:Class``.

The URI and the broker URLs are stored as given and shown only through :func:`public_view`,
with any password masked.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from engine.config import PIPELINES_DIR, PipelineSpec, load_pipeline
from engine.errors import ConfigError
from engine.publish.base import check_publish_url
from engine.sources.spec import SOURCE_KEYS, SourceSpec, parse_sources
from engine.sources.uri import mask_credentials

#: Source options a stream may set (every key of a source mapping but ``uri`` and ``id``).
SOURCE_OPTIONS = tuple(key for key in SOURCE_KEYS if key not in ("uri", "id"))

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StreamConfig:
    """One stream of the service, validated (see the module docstring).

    Attributes:
        name: The stream's name, also its source id.
        uri: Source URI, credentials included (never shown: see :func:`public_view`).
        pipeline: Name of a pipeline in the :class:`PipelineCatalog`.
        source: Source options (``frame_policy``, ``reconnect``, ``stall_timeout_s``...).
        calibration: Calibration file the stages that take one use instead of the pipeline's.
        record_video: Also write the annotated video.
        publish: Broker URLs the stream's object events are published to (``nats://``,
            ``mqtt://``, as ``vistream run --publish``); ``[]`` none; None: the service's
            ``--publish`` URLs.
        enabled: False keeps the stream registered but its worker stopped.
    """

    name: str
    uri: str = field(repr=False)
    pipeline: str = "default"
    source: dict[str, Any] = field(default_factory=dict)
    calibration: str | None = None
    record_video: bool = False
    publish: list[str] | None = field(default=None, repr=False)  # may hold passwords
    enabled: bool = True

    def source_spec(self) -> SourceSpec:
        """The stream's source, validated like a pipeline's ``sources:`` entry.

        Raises:
            ConfigError: A bad URI or source option (the message masks credentials).
        """
        return parse_sources([{**self.source, "uri": self.uri, "id": self.name}])[0]

    def to_dict(self) -> dict[str, Any]:
        """The stored form (credentials included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> StreamConfig:
        """Rebuild a stored configuration (unknown keys are ignored: older rows stay readable)."""
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in document.items() if key in known})


def public_view(config: StreamConfig) -> dict[str, Any]:
    """What the API and the UI show of a stream's configuration: the URI masked."""
    document = config.to_dict()
    document["uri"] = mask_credentials(config.uri)
    if config.publish is not None:
        document["publish"] = [mask_credentials(url) for url in config.publish]
    return document


def check_name(name: Any) -> str:
    """Return ``name`` if it is a valid stream name.

    Raises:
        ConfigError: Not letters, digits, ``.``, ``_`` or ``-`` (1 to 64 characters).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"stream name must be 1-64 letters, digits, '.', '_' or '-' starting with a letter "
            f"or digit, got {name!r}"
        )
    return name


class PipelineCatalog:
    """The pipelines streams may use, by name.

    Args:
        data_dir: The service's data directory; its ``pipelines/*.yaml`` are added.
    """

    def __init__(self, data_dir: Path) -> None:
        self.user_dir = Path(data_dir) / "pipelines"

    def names(self) -> list[str]:
        """Every pipeline name, sorted."""
        return sorted(self._files())

    def path(self, name: str) -> Path:
        """The YAML file of a pipeline name.

        Raises:
            ConfigError: No pipeline has this name (the message lists the names).
        """
        files = self._files()
        if not isinstance(name, str) or name not in files:
            raise ConfigError(f"unknown pipeline {name!r}; expected one of: {', '.join(sorted(files))}")
        return files[name]

    def load(self, name: str) -> PipelineSpec:
        """Read and validate a pipeline by name (stages resolved, arguments bound, nothing built).

        Raises:
            ConfigError: Unknown name, or an invalid pipeline file.
        """
        return load_pipeline(str(self.path(name)))

    def _files(self) -> dict[str, Path]:
        files = {path.stem: path for path in PIPELINES_DIR.glob("*.yaml")}
        if self.user_dir.is_dir():
            files.update({path.stem: path for path in self.user_dir.glob("*.yaml")})
        return files


def calibration_stages(spec: PipelineSpec) -> list[str]:
    """Names of the pipeline's stages whose constructor takes a ``calibration`` argument."""
    return [stage.name for stage in spec.stages if _takes_calibration(stage.stage_class)]


def with_calibration(spec: PipelineSpec, path: Path) -> PipelineSpec:
    """``spec`` with every stage that takes a ``calibration`` given ``path`` instead."""
    stages = [
        dataclasses.replace(stage, arguments={**stage.arguments, "calibration": path})
        if _takes_calibration(stage.stage_class)
        else stage
        for stage in spec.stages
    ]
    return dataclasses.replace(spec, stages=stages)


def pipeline_calibration(spec: PipelineSpec) -> Path | None:
    """The calibration file the pipeline's first calibrated stage is configured with, if any."""
    for stage in spec.stages:
        value = stage.arguments.get("calibration")
        if value is not None and _takes_calibration(stage.stage_class):
            return Path(value)
    return None


def validate_stream(document: dict[str, Any], catalog: PipelineCatalog) -> StreamConfig:
    """Check a stream configuration as far as can be done without running it.

    The name, the URI and source options (parsed like a pipeline's sources), the pipeline
    (found and validated: every stage resolved and its arguments bound) and the calibration
    (only with a pipeline that has a stage taking one).

    Raises:
        ConfigError: The first problem, in one line, credentials masked.
    """
    missing = [key for key in ("name", "uri") if key not in document]
    if missing:
        raise ConfigError(f"missing '{missing[0]}'")
    config = StreamConfig.from_dict(document)
    check_name(config.name)
    if not isinstance(config.uri, str) or not isinstance(config.pipeline, str):
        raise ConfigError("'uri' and 'pipeline' must be strings")
    if not isinstance(config.source, dict):
        raise ConfigError(f"'source' must be a mapping of source options, got {config.source!r}")
    unknown = sorted(set(config.source) - set(SOURCE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown source option '{unknown[0]}' (expected {', '.join(SOURCE_OPTIONS)})")
    try:
        config.source_spec()
    except ConfigError as error:
        # parse_sources names the place as "sources[0] (uri)"; the stream has one source.
        raise ConfigError(mask_credentials(str(error)).replace("sources[0] ", "source ", 1)) from None
    spec = catalog.load(config.pipeline)
    if config.calibration is not None and not calibration_stages(spec):
        raise ConfigError(f"pipeline {config.pipeline!r} has no stage that takes a calibration")
    if config.publish is not None:
        if not isinstance(config.publish, list):
            raise ConfigError(f"'publish' must be a list of broker URLs or null, got {config.publish!r}")
        for url in config.publish:
            check_publish_url(url)
        if len(set(config.publish)) != len(config.publish):
            raise ConfigError("'publish': a broker is given twice")
    for name in ("record_video", "enabled"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"'{name}' must be true or false, got {getattr(config, name)!r}")
    return config


def _takes_calibration(stage_class: type) -> bool:
    constructor = cast(Any, stage_class).__init__
    try:
        return "calibration" in inspect.signature(constructor).parameters
    except (TypeError, ValueError):
        return False
