"""The source contract: something that opens, yields frames in order, and closes.

Also here: :class:`Feed` (a source and its frame policy, what the pipeline is given) and
:class:`SegmentedSource` (a source that reconnects and reports its segments).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.errors import ConfigError
from engine.frame import Frame, SourceInfo

#: How a source's queue behaves when the pipeline falls behind (see :mod:`engine.batching`).
FRAME_POLICIES = ("latest", "all")


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


@dataclass(frozen=True)
class Feed:
    """A source of the pipeline and how its frames are queued.

    Attributes:
        source: The source (not yet opened).
        frame_policy: ``"latest"``, ``"all"``, or None for the default (``latest`` when the
            source reports itself live, ``all`` otherwise).
    """

    source: Source
    frame_policy: str | None = None

    def __post_init__(self) -> None:
        if self.frame_policy is not None and self.frame_policy not in FRAME_POLICIES:
            raise ConfigError(
                f"frame_policy: expected one of {', '.join(FRAME_POLICIES)}, got {self.frame_policy!r}"
            )


class SegmentListener(Protocol):
    """Told, on the reading thread, when a supervised source's segments start and end."""

    def segment_started(self, source_id: str, segment: int, info: SourceInfo, event: dict[str, Any]) -> None:
        """Segment ``segment`` (from 1) starts; ``event`` is JSON-ready, for the outputs."""

    def segment_ended(self, source_id: str, segment: int, reason: str) -> None:
        """Segment ``segment`` ended (``reason`` says why, credentials masked)."""


@runtime_checkable
class SegmentedSource(Source, Protocol):
    """A source that reconnects: each connection is a *segment* that listeners hear about.

    The pipeline subscribes its reader before ``frames`` and resets per-source stage state
    (trackers) at the end of each segment (:mod:`engine.sources.supervised`).
    """

    def subscribe(self, listener: SegmentListener) -> None:
        """Hear about segments; call before ``frames``."""
