"""The publisher contract and the choice of publisher by URL scheme.

A publisher delivers spooled events to one broker. It is driven by one
:class:`~engine.publish.runner.PublisherRunner` thread, which hands it batches in spool
order and moves the spool cursor past what it acknowledged; the publisher owns its
connection (and any I/O thread or event loop it needs) and reconnects by itself.

A new broker is one module: a class with the members of :class:`Publisher`, and one line in
:data:`SCHEMES`. (No Kafka publisher ships: no Kafka broker can be run here to test one.)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from engine.errors import ConfigError, EngineError
from engine.publish.spool import SpooledEvent
from engine.sources.uri import mask_credentials

#: URL scheme -> ``module:Class`` of its publisher (imported only when used).
SCHEMES: dict[str, str] = {
    "nats": "engine.publish.nats:NatsPublisher",
    "mqtt": "engine.publish.mqtt:MqttPublisher",
}

_SUBJECT_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class PublishError(EngineError):
    """A broker refused or did not acknowledge a publish (the events stay spooled)."""


class Publisher(Protocol):
    """Delivers events to one broker.

    Attributes:
        name: The broker URL with credentials masked (metric label, spool cursor name).
        connections: How many times a connection was established so far; the runner sends
            recently acknowledged events again when it grows past 1 (a restarted broker may
            have lost what it acknowledged just before it died).
    """

    name: str
    connections: int

    def connect(self, timeout_s: float) -> None:
        """Start connecting (and keep reconnecting in the background); never raises for an
        unreachable broker, only for an invalid configuration."""

    @property
    def connected(self) -> bool:
        """True while a connection is up."""

    def publish(self, events: Sequence[SpooledEvent], timeout_s: float) -> int:
        """Publish ``events`` in order; return how many, from the first, the broker
        acknowledged (fewer than all when the connection broke halfway).

        Raises:
            PublishError: Nothing could be published (not connected, refused).
        """

    def close(self) -> None:
        """Close the connection; safe to call twice."""


def topic_token(source_id: str) -> str:
    """A source id made safe as one NATS subject token or MQTT topic level."""
    return _SUBJECT_UNSAFE.sub("_", source_id) or "_"


def check_publish_url(url: object) -> str:
    """Return ``url`` if it names a broker a publisher exists for; nothing is imported or
    connected (the service validates stream configurations with it).

    Raises:
        ConfigError: Not a string, unknown scheme, or no ``HOST:PORT``.
    """
    if not isinstance(url, str):
        raise ConfigError(f"--publish: a broker URL must be a string, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"--publish {mask_credentials(url)!r}: unknown scheme {parts.scheme!r}; expected one of "
            + ", ".join(f"{scheme}://" for scheme in SCHEMES)
        )
    try:
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"--publish {mask_credentials(url)!r}: {error}") from error
    if not parts.hostname or port is None:
        raise ConfigError(f"--publish {mask_credentials(url)!r}: expected {parts.scheme}://HOST:PORT")
    return url


def open_publisher(url: str) -> Publisher:
    """Build the publisher for a ``--publish`` URL (``nats://host:port``, ``mqtt://host:port``).

    Raises:
        ConfigError: Unknown scheme or malformed URL.
    """
    target = SCHEMES[urlsplit(check_publish_url(url)).scheme]
    module_name, _, class_name = target.partition(":")
    publisher_class = getattr(importlib.import_module(module_name), class_name)
    publisher: Publisher = publisher_class(url)
    return publisher
