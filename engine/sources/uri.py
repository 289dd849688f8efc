"""Source URIs: what kind of source a string names, and how to show it without secrets.

Accepted forms (anything else is a :class:`~engine.errors.ConfigError`):

- a file path (``video.mp4``, ``/data/clip.avi``) or a ``file://`` URI;
- ``rtsp://[user:password@]host[:port]/path`` (and ``rtsps://``);
- a V4L2 device, ``/dev/videoN``;
- ``test://?width=W&height=H&fps=F&pattern=smpte&frames=N&live=0|1``: a generated test
  picture. Every parameter is optional: 640x480, 30 fps, pattern ``smpte``, unlimited frames.
  Unlimited test sources are live (paced at ``fps``); ``frames=N`` makes a finite source that
  runs as fast as it is read, unless ``live=1`` is given too.

Credentials never leave this module unmasked: :func:`mask_credentials` turns
``rtsp://user:pass@host`` into ``rtsp://user:***@host`` anywhere in a string, and
:attr:`SourceUri.display` is what logs, errors and ``SourceInfo.uri`` use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

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
# scheme://user:password@ — the password runs to the last '@' before the path starts.
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):[^/\s]*@")


def mask_credentials(text: str) -> str:
    """Replace every URL password in ``text`` with ``***``.

    Args:
        text: Any string: a URI, an error message, a GStreamer debug line.

    Returns:
        ``text`` with ``scheme://user:password@`` rewritten as ``scheme://user:***@``.
    """
    return _CREDENTIALS.sub(r"\g<head>:***@", text)


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
        location: The file path (absolute), the RTSP URL with credentials, or the device path.
            Empty for test sources.
        display: The URI to show to people: credentials masked.
        test: Test picture parameters, for ``test://`` only.
    """

    kind: SourceKind
    location: str
    display: str
    test: TestPattern | None = None

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
        if not urlsplit(uri).hostname:
            raise ConfigError(f"RTSP URI has no host: {mask_credentials(uri)!r}")
        return SourceUri(kind="rtsp", location=uri, display=mask_credentials(uri))
    if scheme == "test":
        return SourceUri(kind="test", location="", display=uri, test=_parse_test(uri))
    if scheme == "file":
        parts = urlsplit(uri)
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
    path = str(Path(uri).expanduser().absolute())
    return SourceUri(kind="file", location=path, display=path)


def _parse_test(uri: str) -> TestPattern:
    parts = urlsplit(uri)
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
