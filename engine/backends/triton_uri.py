"""Naming a model served by Triton: ``triton[+http|+grpc]://HOST[:PORT]/MODEL[/VERSION]``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.errors import ConfigError

#: URI schemes -> protocol.
SCHEMES = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}
_DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


@dataclass(frozen=True)
class TritonTarget:
    """Where a model is served: protocol, ``host:port``, model name and version ("" = latest)."""

    protocol: str
    url: str
    model: str
    version: str = ""

    def __str__(self) -> str:
        scheme = "triton" if self.protocol == "grpc" else "triton+http"
        return f"{scheme}://{self.url}/{self.model}" + (f"/{self.version}" if self.version else "")


def is_triton_uri(value: object) -> bool:
    """True for a string that starts with one of the :data:`SCHEMES`."""
    return isinstance(value, str) and value.split("://", 1)[0].lower() in SCHEMES and "://" in value


def parse_triton_uri(uri: str) -> TritonTarget:
    """Parse ``triton[+http|+grpc]://HOST[:PORT]/MODEL[/VERSION]``.

    The port defaults to Triton's (8001 gRPC, 8000 HTTP); the version to the server's policy
    (usually the latest).

    Raises:
        ConfigError: The URI is malformed.
    """
    parts = urlsplit(uri)
    protocol = SCHEMES.get(parts.scheme.lower())
    path = [part for part in parts.path.split("/") if part]
    if protocol is None or not parts.hostname or not 1 <= len(path) <= 2 or parts.query or parts.fragment:
        raise ConfigError(
            f"malformed Triton model URI {uri!r}: expected triton[+http]://HOST:PORT/MODEL[/VERSION]"
        )
    try:
        port = parts.port or _DEFAULT_PORTS[protocol]
    except ValueError as error:
        raise ConfigError(f"malformed Triton model URI {uri!r}: {error}") from error
    version = path[1] if len(path) == 2 else ""
    if version and not version.isdigit():
        raise ConfigError(f"Triton model version must be a number in {uri!r}, got {version!r}")
    return TritonTarget(protocol, f"{parts.hostname}:{port}", path[0], version)
