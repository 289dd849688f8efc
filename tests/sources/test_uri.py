"""URI parsing, test:// parameters and credential masking."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.sources.uri import TestPattern, mask_credentials, parse_uri


@pytest.mark.parametrize(
    ("uri", "kind", "location", "display", "live"),
    [
        ("/data/clip.avi", "file", "/data/clip.avi", "/data/clip.avi", False),
        ("file:///tmp/a%20b.mp4", "file", "/tmp/a b.mp4", "/tmp/a b.mp4", False),
        ("file://localhost/tmp/x.mkv", "file", "/tmp/x.mkv", "/tmp/x.mkv", False),
        ("/dev/video2", "v4l2", "/dev/video2", "/dev/video2", True),
        (
            "rtsp://admin:s3cr@t@10.0.0.5:554/stream1",
            "rtsp",
            "rtsp://10.0.0.5:554/stream1",  # the user and password go to rtspsrc as properties
            "rtsp://admin:***@10.0.0.5:554/stream1",
            True,
        ),
        ("rtsp://10.0.0.5/live", "rtsp", "rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live", True),
    ],
)
def test_parse_uri_kinds(uri: str, kind: str, location: str, display: str, live: bool) -> None:
    parsed = parse_uri(uri)
    assert (parsed.kind, parsed.location, parsed.display, parsed.live) == (
        kind,
        location,
        display,
        live,
    )


def test_relative_file_path_becomes_absolute() -> None:
    parsed = parse_uri("videos/in.mp4")
    assert parsed.kind == "file"
    assert parsed.location == str(Path("videos/in.mp4").absolute())


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("test://", TestPattern()),
        (
            "test://?width=160&height=120&fps=30&frames=20",
            TestPattern(width=160, height=120, fps=Fraction(30), frames=20, live=False),
        ),
        ("test://?fps=30000/1001&pattern=ball", TestPattern(fps=Fraction(30000, 1001), pattern="ball")),
        ("test://?fps=12.5&frames=3&live=1", TestPattern(fps=Fraction(25, 2), frames=3, live=True)),
    ],
)
def test_test_uri_parameters(uri: str, expected: TestPattern) -> None:
    parsed = parse_uri(uri)
    assert parsed.kind == "test"
    assert parsed.test == expected
    assert parsed.live == expected.live


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("test://?width=0", "'width'"),
        ("test://?height=-5", "'height'"),
        ("test://?width=12x", "'width'"),
        ("test://?fps=abc", "'fps'"),
        ("test://?fps=0", "'fps'"),
        ("test://?frames=2.5", "'frames'"),
        ("test://?pattern=plaid", "'pattern'"),
        ("test://?live=maybe", "'live'"),
        ("test://?colour=red", "'colour'"),
        ("test://somewhere", "query parameters"),
        ("ftp://host/video.mp4", "'ftp'"),
        ("", "non-empty"),
        ("rtsp:///nohost", "no host"),
    ],
)
def test_invalid_uris_name_the_problem(uri: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        parse_uri(uri)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://user:pass@host/x", "rtsp://user:***@host/x"),
        ("rtsp://user:p@ss:w0rd@host:554/x", "rtsp://user:***@host:554/x"),
        ("rtsp://user@host/x", "rtsp://user@host/x"),
        ("rtsp://host:554/x", "rtsp://host:554/x"),
        (
            "failed: rtsp://a:b@h1/s and rtsps://c:d@h2/t.",
            "failed: rtsp://a:***@h1/s and rtsps://c:***@h2/t.",
        ),
        ("no url here: x:y@z", "no url here: x:y@z"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked
