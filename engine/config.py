"""Pipeline YAML → validated :class:`PipelineSpec`, with stage arguments bound to constructors.

Format::

    source: path/or/uri.mp4          # optional; the CLI's SOURCE arguments win
    sources:                         # or several (not both): URIs or mappings with options,
      - rtsp://user:pass@10.0.0.5/s1 #   see engine.sources.spec (id, frame_policy, reconnect...)
      - uri: clips/entrance.mp4
        id: entrance
    device: cpu                      # cpu | cuda | cuda:N
    batch_size: 1                    # frames per stage call (all sources together)
    max_wait_ms: 20                  # an incomplete batch waits this long for more frames
    workers: 1                       # batches in the leading concurrent stages (detect) at once
    on_error: fail                   # fail | skip (skip the batch, count it, go on)
    stage_timeout_s: auto            # watchdog per stage call: auto (30 s if live) | off | seconds
    stages:
      - stage: detect                # entry-point name or package.module:Class
        name: detect                 # optional label (defaults to the stage value)
        model: ${VISTREAM_MODELS}/yolo11n_fp32_320.onnx
        confidence: 0.25

Every error names its place, e.g. ``stages[1] (track): unexpected argument 'buffer'``.
String values may use ``${VAR}`` or ``${VAR:-default}``; arguments annotated as ``Path``
and relative source file paths are resolved relative to the YAML file's directory; a
value with a URI scheme (``triton://host:port/model``) is never resolved: an argument
annotated ``Path | str`` receives it as a string, a plain ``Path`` argument rejects it.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

from engine.checks import check_choice, check_int, check_number, check_str, read_yaml, shown
from engine.device import CPU, Device, parse_device
from engine.errors import ConfigError, EngineError
from engine.locations import default_variables
from engine.registry import resolve_stage
from engine.sources.spec import SourceSpec, default_source_id, parse_sources
from engine.stage import Stage

__all__ = [
    "ERROR_POLICIES",
    "PIPELINES_DIR",
    "PipelineSettings",
    "PipelineSpec",
    "SourceSpec",
    "StageSpec",
    "bind_arguments",
    "default_source_id",
    "default_variables",
    "find_pipeline",
    "load_pipeline",
    "parse_pipeline",
    "parse_sources",
]

#: Directory of the pipelines that ship with the engine (chosen by name: `--pipeline traffic`).
PIPELINES_DIR = Path(__file__).parent / "pipelines"

#: What a pipeline does when a stage raises: stop the run, or skip the batch and count it.
ERROR_POLICIES = ("fail", "skip")

#: Upper bounds of the frame counts a run holds in memory at once.
MAX_BATCH_SIZE = 256
MAX_READ_AHEAD_FRAMES = 1024
#: The stage watchdog's limit when ``stage_timeout_s`` is ``auto`` and a source is live.
LIVE_STAGE_TIMEOUT_S = 30.0

_SETTING_KEYS = {"device", "batch_size", "max_wait_ms", "workers", "on_error", "stage_timeout_s"}
_TOP_LEVEL_KEYS = {"source", "sources", "stages", *_SETTING_KEYS}
#: A value with a URI scheme (``triton://``, ``rtsp://``...): a ``Path`` argument never takes it.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline, validated but not constructed.

    Attributes:
        position: Index in the YAML ``stages`` list (used in error messages).
        name: Label of the stage (metrics and summaries use it).
        stage_class: The class to construct.
        arguments: Keyword arguments for the constructor, already type-checked.
    """

    position: int
    name: str
    stage_class: type[Stage]
    arguments: dict[str, Any]

    @property
    def place(self) -> str:
        """Where the stage is in the YAML, for messages: ``stages[1] (track)``."""
        return f"stages[{self.position}] ({self.name})"

    def build(self) -> Stage:
        """Construct the stage; constructor errors become ConfigError naming the place."""
        try:
            return self.stage_class(**self.arguments)
        except EngineError as error:
            raise type(error)(f"{self.place}: {error}") from error
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{self.place}: {error}") from error


@dataclass(frozen=True)
class PipelineSettings:
    """How a pipeline runs, validated once, here: whoever builds settings (a YAML file, a
    command-line override, a test) gets the same checks, and the pipeline trusts them.

    Attributes:
        device: Where stages put models and tensors (a string is parsed by
            :func:`engine.device.parse_device`).
        batch_size: Most frames per stage call (frames of several sources share a batch).
        on_error: ``"fail"`` (stop with an error; outputs are still finalized) or ``"skip"``
            (send the failing batch on unprocessed, mark and count it).
        max_wait_ms: How long an incomplete batch waits for more frames.
        workers: Batches run at once through the leading concurrent stages.
        drain_timeout_s: After a stop request, how long queued frames are still processed.
        read_ahead_frames: Queue size per source under the ``all`` frame policy (at least
            ``batch_size`` is used).
        stage_timeout_s: The watchdog on each stage call: seconds a call may take before it
            counts as failed (``on_error`` decides), ``"off"``, or ``"auto"``: 30 s when a
            source is live, off for files (a slow machine must not fail an offline job).
    """

    device: Device = CPU
    batch_size: int = 1
    on_error: str = "fail"
    max_wait_ms: float = 20.0
    workers: int = 1
    drain_timeout_s: float = 10.0
    read_ahead_frames: int = 8
    stage_timeout_s: float | str = "auto"

    def __post_init__(self) -> None:
        # object.__setattr__: the dataclass is frozen, and these are normalizations of
        # the values just given (a device string parsed, an int timeout made a float).
        object.__setattr__(self, "device", parse_device(self.device))
        # Upper bounds: memory grows with batch_size x read-ahead x sources, and a value far
        # past any real use is a typo (--batch-size 100000 once took 3.8 GB before failing).
        check_int("batch_size", self.batch_size, low=1, high=MAX_BATCH_SIZE)
        check_choice("on_error", self.on_error, ERROR_POLICIES)
        object.__setattr__(
            self, "max_wait_ms", check_number("max_wait_ms", self.max_wait_ms, low=0, high=60_000)
        )
        check_int("workers", self.workers, low=1)
        object.__setattr__(
            self, "drain_timeout_s", check_number("drain_timeout_s", self.drain_timeout_s, low=0, high=3600)
        )
        check_int("read_ahead_frames", self.read_ahead_frames, low=1, high=MAX_READ_AHEAD_FRAMES)
        object.__setattr__(self, "stage_timeout_s", _check_stage_timeout(self.stage_timeout_s))

    def stage_timeout_for(self, live: bool) -> float | None:
        """The watchdog limit of a run (None: off), with ``"auto"`` resolved for ``live``."""
        if self.stage_timeout_s == "off":
            return None
        if self.stage_timeout_s == "auto":
            return LIVE_STAGE_TIMEOUT_S if live else None
        return float(self.stage_timeout_s)


def _check_stage_timeout(value: Any) -> float | str:
    """``"auto"``, ``"off"``, or seconds in (0, 3600] (a numeric string is taken as seconds)."""
    if value in ("auto", "off"):
        return str(value)
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(
                f"stage_timeout_s: expected auto, off or a number of seconds, got {shown(value)}"
            ) from None
    return check_number("stage_timeout_s", value, low=0, low_open=True, high=3600)


@dataclass(frozen=True)
class PipelineSpec:
    """A whole pipeline: where frames come from, how it runs, and the stages.

    Attributes:
        stages: The stages, in order.
        settings: Device, batching, error policy, workers.
        sources: Default sources when the command line gives none.
        config_dir: Directory of the YAML file (relative paths resolve against it).
    """

    stages: list[StageSpec]
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    sources: tuple[SourceSpec, ...] = ()
    config_dir: Path = Path(".")

    @property
    def source(self) -> str | None:
        """The first source's URI, or None."""
        return self.sources[0].uri if self.sources else None

    def override(self, *, from_cli: bool = False, **changes: Any) -> PipelineSpec:
        """This spec with some settings replaced, validated like the YAML's own.

        A value of None leaves that setting as it is, so command-line options that were not
        given can be passed straight through: ``spec.override(workers=args.workers)``.

        Args:
            from_cli: Name a rejected value by its option (``--batch-size``) in the error.
            changes: Setting name → new value (None: unchanged).

        Raises:
            ConfigError: An unknown setting, or a value the setting does not accept.
        """
        known = {item.name for item in fields(PipelineSettings)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting '{unknown[0]}' (expected {', '.join(sorted(known))})")
        settings = self.settings
        for name, value in changes.items():
            if value is None:
                continue
            try:
                settings = replace(settings, **{name: value})
            except ConfigError as error:
                if not from_cli:
                    raise
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option}{str(error).removeprefix(name)}") from error
        return replace(self, settings=settings)


def find_pipeline(name_or_path: str) -> Path:
    """Return the YAML file for a path, or for the name of a shipped pipeline."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PIPELINES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
    raise ConfigError(f"pipeline '{name_or_path}' is neither a file nor a shipped pipeline ({names})")


def load_pipeline(name_or_path: str) -> PipelineSpec:
    """Read, validate and bind a pipeline YAML file (or a shipped pipeline by name)."""
    path = find_pipeline(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read: {reason}") from error
    document = read_yaml(text, str(path))
    try:
        return parse_pipeline(document, config_dir=path.resolve().parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def parse_pipeline(document: Any, *, config_dir: Path) -> PipelineSpec:
    """Validate an already-parsed YAML document (a dict) into a PipelineSpec."""
    if not isinstance(document, dict):
        raise ConfigError(f"expected a mapping with a 'stages' list, got {type(document).__name__}")
    unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' (expected {', '.join(sorted(_TOP_LEVEL_KEYS))})")
    stages_document = document.get("stages")
    if not isinstance(stages_document, list) or not stages_document:
        raise ConfigError("'stages' must be a non-empty list")
    variables = default_variables()
    settings = PipelineSettings(**{key: document[key] for key in _SETTING_KEYS if key in document})
    if "source" in document and "sources" in document:
        raise ConfigError("give either 'source' or 'sources', not both")
    entries: list[Any] = []
    if document.get("source") is not None:
        entries = [check_str("source", document["source"])]
    elif "sources" in document:
        entries = document["sources"]
        if not isinstance(entries, list) or not entries:
            raise ConfigError("'sources' must be a non-empty list of URIs or mappings with 'uri'")
    sources = parse_sources(_expand_sources(entries, variables), config_dir=config_dir)
    stages = [
        _parse_stage(position, entry, config_dir, variables) for position, entry in enumerate(stages_document)
    ]
    names = [spec.name for spec in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"stage name '{duplicates[0]}' is used twice; give one a 'name:'")
    return PipelineSpec(stages=stages, settings=settings, sources=sources, config_dir=config_dir)


def _expand_sources(entries: list[Any], variables: dict[str, str]) -> list[Any]:
    """The source entries with ``${VAR}`` expanded in their URIs."""
    expanded: list[Any] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = _expand(entry, variables, f"sources[{position}]")
        elif isinstance(entry, dict) and isinstance(entry.get("uri"), str):
            entry = {**entry, "uri": _expand(entry["uri"], variables, f"sources[{position}].uri")}
        expanded.append(entry)
    return expanded


def _parse_stage(position: int, entry: Any, config_dir: Path, variables: dict[str, str]) -> StageSpec:
    place = f"stages[{position}]"
    if not isinstance(entry, dict) or "stage" not in entry:
        raise ConfigError(f"{place}: expected a mapping with a 'stage' key")
    stage_value = check_str(f"{place}.stage", entry["stage"])
    name = check_str(f"{place}.name", entry.get("name", stage_value))
    place = f"{place} ({name})"
    try:
        stage_class = resolve_stage(stage_value)
    except EngineError as error:
        raise ConfigError(f"{place}: {error}") from error
    raw_arguments = {key: value for key, value in entry.items() if key not in ("stage", "name")}
    arguments = bind_arguments(stage_class, raw_arguments, place, config_dir, variables)
    return StageSpec(position=position, name=name, stage_class=stage_class, arguments=arguments)


def bind_arguments(
    stage_class: type,
    raw_arguments: dict[str, Any],
    place: str,
    config_dir: Path,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check YAML arguments against the constructor signature and convert them.

    Raises:
        ConfigError: An unexpected or missing argument, or a value of the wrong type.
    """
    variables = variables if variables is not None else default_variables()
    constructor = cast(Any, stage_class).__init__  # through Any: mypy refuses __init__ on a class
    signature = inspect.signature(constructor)
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    for key in raw_arguments:
        if key not in parameters and not accepts_any:
            expected = ", ".join(parameters) or "no arguments"
            raise ConfigError(f"{place}: unexpected argument '{key}' (expected: {expected})")
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.default is parameter.empty and name not in raw_arguments
    ]
    if missing:
        raise ConfigError(f"{place}: missing required argument '{missing[0]}'")
    try:
        hints = typing.get_type_hints(constructor)
    except Exception:  # unresolvable annotations: bind without type checks
        hints = {}
    bound: dict[str, Any] = {}
    for key, value in raw_arguments.items():
        where = f"{place}: argument '{key}'"
        bound[key] = _convert(value, hints.get(key, Any), where, config_dir, variables)
    return bound


def _convert(value: Any, hint: Any, where: str, config_dir: Path, variables: dict[str, str]) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the place."""
    if isinstance(value, str):
        value = _expand(value, variables, where)
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        # Path before str whatever the order written, so ``str | Path`` still resolves files.
        options = tuple(sorted(typing.get_args(hint), key=lambda option: option is not Path))
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where, config_dir, variables)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {shown(value)}")
        return value
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        item_hints = typing.get_args(hint)
        if origin is tuple and item_hints and item_hints[-1] is not Ellipsis:
            if len(value) != len(item_hints):
                raise ConfigError(f"{where}: expected {len(item_hints)} items, got {len(value)}")
            return tuple(
                _convert(item, item_hint, where, config_dir, variables)
                for item, item_hint in zip(value, item_hints, strict=True)
            )
        item_hint = item_hints[0] if item_hints else Any
        items = [_convert(item, item_hint, where, config_dir, variables) for item in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {shown(value)}")
        if isinstance(value, str) and _URI.match(value):
            # Never resolved as a file; an argument typed ``Path | str`` takes it as a string.
            raise ConfigError(f"{where}: expected a file path, got the URI {shown(value)}")
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~name" of a user that does not exist
            raise ConfigError(f"{where}: cannot expand {shown(value)}: no such user") from None
        return path if path.is_absolute() else (config_dir / path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return value
    return value


def _expand(text: str, variables: dict[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable '{name}' is not set")

    return _VARIABLE.sub(replace, text)
