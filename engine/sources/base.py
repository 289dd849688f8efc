"""The source contract: something that opens, yields frames in order, and closes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from engine.frame import Frame, SourceInfo


class Source(Protocol):
    """A stream of decoded frames from one file, camera or generator.

    ``open`` returns the source's facts; ``frames`` yields :class:`Frame` objects in order
    (``index`` from 0, ``pts_ns`` from the stream's clock) until the end of the stream, and
    raises :class:`engine.errors.SourceError` with a one-line reason when reading fails.
    Frames decoded before a failure are yielded first, so no data is lost. ``close`` is
    idempotent and may be called from another thread to make ``frames`` return early.
    """

    def open(self) -> SourceInfo:
        """Start decoding; raise SourceError when the source cannot be opened."""

    def frames(self) -> Iterator[Frame]:
        """Yield frames until the end of the stream."""

    def close(self) -> None:
        """Stop decoding and release everything; safe to call twice."""
