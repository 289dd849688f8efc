"""Source URIs: what kind of source a string names, and how to show it without secrets.

Accepted forms (anything else is a :class:`~engine.errors.ConfigError`):

- a file path (``video.mp4``, ``/data/clip.avi``) or a ``file://`` URI;
- ``rtsp://[user:password@]host[:port]/path`` (and ``rtsps://``);
- a V4L2 device, ``/dev/videoN``;
- ``test://?width=W&height=H&fps=F&pattern=smpte&frames=N&live=0|1``: a generated test
  picture. Every parameter is optional: 640x480, 30 fps, pattern ``smpte``, unlimited frames.
  Unlimited test sources are live (paced at ``fps``); ``frames=N`` makes a finite source that
  runs as fast as it is read, unless ``live=1`` is given too.

Credentials never leave this module unmasked. An RTSP URI is split by hand, not by
``urlsplit``: a password may hold any character (``/``, ``?``, ``#``, spaces, ``@``), and the
userinfo runs to the last ``@`` before the host. The password and the values of query
parameters named like secrets (``password``, ``token``, ``key``, ``signature``...) are
registered as secrets; :func:`mask_credentials` masks them, and any ``scheme://user:pass@``,
anywhere in a string (a log line, an error, a GStreamer message), and
:attr:`SourceUri.display` is what logs, errors and ``SourceInfo.uri`` use. GStreamer gets the
location without credentials and the user and password as ``rtspsrc`` properties, so its own
debug log never prints them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from engine.errors import ConfigError

SourceKind = Literal["file", "rtsp", "v4l2", "test"]

#: videotestsrc pattern names (GStreamer 1.22).
TEST_PATTERNS = frozenset(
    "smpte snow black white red green blue checkers-1 checkers-2 checkers-4 checkers-8 "
    "circular blink smpte75 zone-plate gamut chroma-zone-plate solid-color ball smpte100 bar "
    "pinwheel spokes gradient colors smpte-rp-219".split()
)

_TEST_PARAMS = ("width", "height", "fps", "pattern", "frames", "live")
_V4L2_DEVICE = re.compile(r"^/dev/video\d+$")
# scheme://user:password@ in free text: the password runs to the last '@' of the word.
# Quotes end it too (a URI inside JSON or a repr).
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s\"']*):[^\s\"']*@")
#: Query parameters whose values are secrets (compared case-insensitively).
SECRET_PARAMETERS = frozenset(
    "password passwd pwd pass passphrase token access_token auth auth_token authorization key "
    "apikey api_key secret client_secret signature sig credential credentials session".split()
)
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&;](?:"
    + "|".join(sorted(SECRET_PARAMETERS, key=len, reverse=True))
    + r")=)[^&;#\s\"'<>(),:]*",
    re.IGNORECASE,
)
_MIN_SECRET_CHARS = 3  # shorter values would mask ordinary words; the patterns still catch them
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask ``value`` (and its percent-encoded form) in every later :func:`mask_credentials`.

    Values shorter than 3 characters are not registered (they would mask ordinary text);
    URL patterns still mask them where they appear in a URI.
    """
    forms = {value, unquote(value), quote(value, safe="")}
    with _secrets_lock:
        _secrets.update(form for form in forms if len(form) >= _MIN_SECRET_CHARS)


def mask_credentials(text: str) -> str:
    """Replace every password and secret in ``text`` with ``***``.

    Args:
        text: Any string: a URI, an error message, a GStreamer debug line.

    Returns:
        ``text`` with registered secrets, ``scheme://user:password@`` passwords and secret
        query parameter values (``?token=...``) rewritten as ``***``.
    """
    if not isinstance(text, str):
        text = str(text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _CREDENTIALS.sub(r"\g<head>:***@", text)
    return _SECRET_QUERY.sub(r"\g<head>***", text)


@dataclass(frozen=True)
class TestPattern:
    """Parameters of a ``test://`` source.

    Attributes:
        width: Picture width in pixels.
        height: Picture height in pixels.
        fps: Frame rate as an exact fraction.
        pattern: videotestsrc pattern name.
        frames: Number of frames before the end of the stream, or None for unlimited.
        live: True when frames are paced at ``fps`` like a camera.
    """

    __test__ = False  # not a pytest class, despite the name

    width: int = 640
    height: int = 480
    fps: Fraction = Fraction(30)
    pattern: str = "smpte"
    frames: int | None = None
    live: bool = True


@dataclass(frozen=True)
class SourceUri:
    """A parsed source URI.

    Attributes:
        kind: ``file``, ``rtsp``, ``v4l2`` or ``test``.
        location: The file path (absolute), the RTSP URL without user and password (secret
            query parameters stay: the camera needs them), or the device path. Empty for test
            sources.
        display: The URI to show to people: credentials masked.
        test: Test picture parameters, for ``test://`` only.
        host: The RTSP host (IPv6 without brackets); empty for other kinds.
        username: The RTSP user, percent-decoded, or None.
        password: The RTSP password, percent-decoded, or None (never shown).
    """

    kind: SourceKind
    location: str
    display: str
    test: TestPattern | None = None
    host: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def live(self) -> bool:
        """True for cameras, network streams and paced test sources."""
        if self.kind == "file":
            return False
        if self.kind == "test":
            return self.test is not None and self.test.live
        return True


def parse_uri(uri: str) -> SourceUri:
    """Classify a source URI and validate its parameters.

    Args:
        uri: A file path, ``file://`` URI, ``rtsp://`` URL, ``/dev/videoN`` or ``test://`` URI.

    Returns:
        The parsed URI. Files are not checked for existence here (``open()`` does that).

    Raises:
        ConfigError: The URI is empty, has an unsupported scheme, or a ``test://`` parameter
            is unknown or invalid.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"source URI must be a non-empty string, got {uri!r}")
    uri = uri.strip()
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("rtsp", "rtsps"):
        return _parse_rtsp(uri, scheme)
    if scheme == "test":
        return SourceUri(kind="test", location="", display=uri, test=_parse_test(uri))
    if scheme == "file":
        try:
            parts = urlsplit(uri)
        except ValueError as error:
            raise ConfigError(f"malformed file URI {uri!r}: {error}") from None
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file URI must name a local file, got host {parts.netloc!r}")
        path = str(Path(unquote(parts.path)).absolute())
        return SourceUri(kind="file", location=path, display=path)
    if scheme:
        raise ConfigError(
            f"unsupported source URI scheme {scheme!r} in {mask_credentials(uri)!r}; expected a "
            "file path, file://, rtsp://, /dev/videoN or test://"
        )
    if _V4L2_DEVICE.match(uri):
        return SourceUri(kind="v4l2", location=uri, display=uri)
    try:
        path = str(Path(uri).expanduser().absolute())
    except RuntimeError:  # "~name" of a user that does not exist
        raise ConfigError(f"cannot expand {uri!r}: no such user's home directory") from None
    return SourceUri(kind="file", location=path, display=path)


def _parse_rtsp(uri: str, scheme: str) -> SourceUri:
    """Split ``rtsp://[user[:password]@]host[:port][/path][?query]`` (see the module docstring)."""
    rest = uri.split("://", 1)[1]
    username = password = None
    at = rest.rfind("@")
    # A user name holds no '/': an '@' after one is in the path, not the end of the userinfo.
    if at >= 0 and "/" not in rest[:at].split(":", 1)[0]:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, _, password_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if ":" in userinfo else None
        for secret in (password_text, password):
            if secret:
                register_secret(secret)
    query = rest.split("?", 1)[1] if "?" in rest else ""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.lower() in SECRET_PARAMETERS and value:
            register_secret(value)
    location = f"{scheme}://{rest}"
    shown_user = f"{quote(username, safe='')}{':***' if password is not None else ''}@" if username else ""
    display = mask_credentials(f"{scheme}://{shown_user}{rest}")
    try:
        parts = urlsplit(location)
        host = parts.hostname
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as error:
        raise ConfigError(f"malformed RTSP URI {display!r}: {error}") from None
    if not host:
        raise ConfigError(f"RTSP URI has no host: {display!r}")
    if parts.netloc.endswith(":") or (port is not None and port == 0):
        raise ConfigError(f"malformed RTSP URI {display!r}: expected a port in 1-65535")
    if any(char.isspace() for char in parts.netloc):
        raise ConfigError(f"malformed RTSP URI {display!r}: the host contains spaces")
    return SourceUri(
        kind="rtsp",
        location=location,
        display=display,
        host=host,
        username=username or None,
        password=password,
    )


def _parse_test(uri: str) -> TestPattern:
    try:
        parts = urlsplit(uri)
    except ValueError as error:
        raise ConfigError(f"malformed test URI {uri!r}: {error}") from None
    if parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"test source takes only query parameters (test://?width=640&height=480), got {uri!r}"
        )
    values: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _TEST_PARAMS:
            raise ConfigError(
                f"unknown test source parameter {key!r} in {uri!r}; expected one of {', '.join(_TEST_PARAMS)}"
            )
        values[key] = value
    width = _positive_int(values, "width", uri) or 640
    height = _positive_int(values, "height", uri) or 480
    frames = _positive_int(values, "frames", uri)
    fps = Fraction(30)
    if "fps" in values:
        try:
            fps = Fraction(values["fps"]).limit_denominator(1001000)
        except (ValueError, ZeroDivisionError):
            fps = Fraction(0)
        if fps <= 0:
            raise ConfigError(
                f"test source parameter 'fps' must be a positive number or fraction "
                f"(30, 29.97, 30000/1001), got {values['fps']!r}"
            )
    pattern = values.get("pattern", "smpte")
    if pattern not in TEST_PATTERNS:
        raise ConfigError(
            f"test source parameter 'pattern' must be one of {', '.join(sorted(TEST_PATTERNS))}, "
            f"got {pattern!r}"
        )
    live = frames is None
    if "live" in values:
        flag = values["live"].lower()
        if flag not in ("0", "1", "true", "false"):
            raise ConfigError(f"test source parameter 'live' must be 0 or 1, got {flag!r}")
        live = flag in ("1", "true")
    return TestPattern(width=width, height=height, fps=fps, pattern=pattern, frames=frames, live=live)


def _positive_int(values: dict[str, str], name: str, uri: str) -> int | None:
    """The named parameter as a positive int, or None when absent."""
    if name not in values:
        return None
    text = values[name]
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(
            f"test source parameter {name!r} must be a positive integer, got {text!r} in {uri!r}"
        )
    return int(text)
