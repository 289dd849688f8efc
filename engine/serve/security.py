"""Who may do what: the access token, the request size cap, the origin check.

- The service binds 127.0.0.1 unless told otherwise; any other address needs a token
  (:func:`require_token_for`). With a token, every mutating request (POST, PUT, PATCH,
  DELETE) and the video (snapshots, live view) must carry it: ``Authorization: Bearer TOKEN``,
  or ``?token=TOKEN`` where a browser cannot set headers (an ``<img>``'s MJPEG).
- Request bodies are capped (:class:`BodySizeLimit`, 413 beyond it) before anything parses them.
- No CORS headers are sent, and a mutating request from another origin (a page elsewhere
  posting to the service, the browser's ``Origin`` header not the service's own) is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from engine.errors import ConfigError

#: Largest request body accepted, in bytes (a stream or a calibration is well under 4 KiB).
MAX_BODY_BYTES = 64 * 1024

#: Environment variable that may hold the token instead of ``--token``.
TOKEN_ENV = "VISTREAM_TOKEN"

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_for(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address and ``token`` is empty.
    """
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} makes the service reachable from other machines: give a token "
            f"(--token or the {TOKEN_ENV} environment variable)"
        )
    if token is not None and len(token) < 16:
        raise ConfigError("the token must be at least 16 characters long")


def token_matches(expected: str | None, headers: dict[str, str], query: dict[str, str]) -> bool:
    """Whether a request carries the token (always True when the service has none)."""
    if not expected:
        return True
    given = ""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    elif "token" in query:
        given = query["token"]
    return hmac.compare_digest(given.encode(), expected.encode())


def cross_origin(headers: dict[str, str]) -> bool:
    """True when a browser says the request comes from a page of another origin."""
    origin = headers.get("origin")
    if not origin:  # not a browser, or a same-origin GET
        return False
    return urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


class BodySizeLimit:
    """ASGI middleware: requests with a body over ``max_bytes`` get 413 and are never parsed.

    Args:
        app: The wrapped ASGI app.
        max_bytes: The cap.
    """

    def __init__(self, app: App, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _reject(send, 413, f"request body over {self.max_bytes} bytes")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _reject(send, 413, f"request body over {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


async def _reject(send: Send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
