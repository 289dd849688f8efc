"""Which sources a run reads: validated source entries (YAML ``sources:`` or CLI arguments).

An entry is a URI, or a mapping::

    - uri: rtsp://user:pass@10.0.0.5/stream1
      id: gate                     # optional; default from the URI (file stem, host, device)
      frame_policy: latest         # latest | all (default: latest if live, else all)
      reconnect: true              # default: true for rtsp://, /dev/video*, endless test://
      max_attempts: null           # consecutive failed attempts before failing; null: forever
      backoff_initial_s: 0.25      # first wait between attempts, then doubled...
      backoff_max_s: 1.0           # ...up to this (with jitter)
      stall_timeout_s: 5           # watchdog: reconnect after this long without a frame
      connect_timeout_s: 10        # one attempt's limit for its first frame

Ids name output files and metric labels, so they are restricted to letters, digits, ``.``,
``_`` and ``-``; ids derived from URIs never contain credentials.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.sources import open_source
from engine.sources.base import FRAME_POLICIES, Feed, Source
from engine.sources.supervised import ReconnectPolicy, open_supervised, reconnects_by_default
from engine.sources.uri import mask_credentials, parse_uri

#: Keys of a source mapping.
SOURCE_KEYS = (
    "uri",
    "id",
    "frame_policy",
    "reconnect",
    "max_attempts",
    "backoff_initial_s",
    "backoff_max_s",
    "stall_timeout_s",
    "connect_timeout_s",
)
_SOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SourceSpec:
    """One source of a pipeline, validated but not opened.

    Attributes:
        uri: File path, ``rtsp://``, ``/dev/videoN``, ``test://`` or ``synthetic://`` URI
            (credentials included: show :attr:`display` instead).
        id: Name of the source in frames, outputs and metrics.
        frame_policy: ``"latest"``, ``"all"``, or None (latest when live, else all).
        reconnect: How to reconnect, or None for a source that ends for good (files).
    """

    uri: str = dataclasses.field(repr=False)  # may hold a password
    id: str = ""
    frame_policy: str | None = None
    reconnect: ReconnectPolicy | None = None

    @property
    def display(self) -> str:
        """The URI with credentials masked."""
        return mask_credentials(self.uri)

    def build(self) -> Feed:
        """Create the (unopened) source and its queueing."""

        if self.reconnect is not None:
            source: Source = open_supervised(self.uri, source_id=self.id, policy=self.reconnect)
        else:
            source = open_source(self.uri, source_id=self.id)
        return Feed(source, self.frame_policy)


def parse_sources(
    entries: list[Any],
    *,
    config_dir: Path | None = None,
    frame_policy: str | None = None,
) -> tuple[SourceSpec, ...]:
    """Validate source entries: URIs, or mappings with the keys of the module docstring.

    Args:
        entries: One item per source (``${VAR}`` already expanded).
        config_dir: Relative file paths resolve against it (None: the current directory).
        frame_policy: Default frame policy for entries that give none.

    Raises:
        ConfigError: An unknown key, an invalid value or URI, or two sources with one id.
    """
    specs = [
        _parse_source(f"sources[{position}]", entry, config_dir, frame_policy)
        for position, entry in enumerate(entries)
    ]
    return tuple(_assign_ids(specs))


def default_source_id(uri: str) -> str:
    """A short, file-name-safe id for a URI: file stem, camera host, device or scheme name."""
    text = uri.strip()
    if text.lower().startswith("synthetic://"):
        name = "synthetic"
    else:
        target = parse_uri(text)
        if target.kind == "file":
            name = Path(target.location).stem
        elif target.kind == "rtsp":
            name = target.host or "rtsp"
        elif target.kind == "v4l2":
            name = Path(target.location).name
        else:
            name = target.kind
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:64]
    return name or "source"


def _parse_source(place: str, entry: Any, config_dir: Path | None, frame_policy: str | None) -> SourceSpec:
    if isinstance(entry, str):
        entry = {"uri": entry}
    if not isinstance(entry, dict) or "uri" not in entry:
        raise ConfigError(f"{place}: expected a URI or a mapping with a 'uri' key")
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{place}: unknown key '{unknown[0]}' (expected {', '.join(SOURCE_KEYS)})")
    uri = _expect(entry["uri"], str, f"{place}.uri")
    try:
        target = None if uri.strip().lower().startswith("synthetic://") else parse_uri(uri)
    except ConfigError as error:
        raise ConfigError(f"{place}: {error}") from error
    if target is not None and target.kind == "file" and config_dir is not None and "://" not in uri:
        path = Path(uri).expanduser()  # cannot raise: parse_uri expanded it already
        uri = str(path if path.is_absolute() else config_dir / path)
    place = f"{place} ({mask_credentials(uri)})"
    source_id = entry.get("id")
    if source_id is not None:
        source_id = _expect(source_id, str, f"{place}.id")
        if not _SOURCE_ID.match(source_id):
            raise ConfigError(
                f"{place}.id: expected letters, digits, '.', '_' or '-' (it names files), got {source_id!r}"
            )
    policy = entry.get("frame_policy", frame_policy)
    if policy is not None and policy not in FRAME_POLICIES:
        raise ConfigError(
            f"{place}.frame_policy: expected one of {', '.join(FRAME_POLICIES)}, got {policy!r}"
        )
    reconnect = entry.get("reconnect")
    if reconnect is None:
        reconnect = reconnects_by_default(uri)
    reconnect = _expect(reconnect, bool, f"{place}.reconnect")
    settings = {key: entry[key] for key in SOURCE_KEYS[4:] if key in entry}
    if settings and not reconnect:
        raise ConfigError(f"{place}: '{next(iter(settings))}' applies to reconnecting sources only")
    try:
        policy_obj = ReconnectPolicy(**settings) if reconnect else None
    except ConfigError as error:
        raise ConfigError(f"{place}.{error}") from error
    return SourceSpec(uri=uri, id=source_id or "", frame_policy=policy, reconnect=policy_obj)


def _assign_ids(specs: list[SourceSpec]) -> list[SourceSpec]:
    """Give sources without an id one from their URI, unique (``name``, ``name-2``, ...)."""
    taken = [spec.id for spec in specs if spec.id]
    duplicates = sorted({name for name in taken if taken.count(name) > 1})
    if duplicates:
        raise ConfigError(f"two sources have the id '{duplicates[0]}'")
    used = set(taken)
    result = []
    for spec in specs:
        if not spec.id:
            base = default_source_id(spec.uri)
            name, number = base, 1
            while name in used:
                number += 1
                name = f"{base}-{number}"
            used.add(name)
            spec = dataclasses.replace(spec, id=name)
        result.append(spec)
    return result


def _expect(value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value
