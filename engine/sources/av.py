"""PyAV (FFmpeg) reader for video files: the fallback when GStreamer is not installed.

It yields the same frames as the GStreamer reader: same count, same timestamps (one rule in
:class:`engine.sources.decoding.FileClock`) and the same BGR conversion of the decoded I420
planes. Pixels are bit-identical when both libraries decode with the same libavcodec; the
system FFmpeg behind gst-libav and the one bundled in the PyAV wheel can differ by ±1 level in
some codecs' reconstruction (see the tests for the measured differences).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.checks import check_int
from engine.errors import ConfigError, SourceError
from engine.frame import Frame, SourceInfo
from engine.sources.decoding import (
    DeclaredLength,
    FileClock,
    check_length,
    declared_length,
    i420_to_bgr,
    missing_file_message,
    nominal_rate,
)
from engine.sources.uri import SourceUri, parse_uri

_log = logging.getLogger(__name__)

# Same plane layout as yuv420p; colour range is ignored exactly as GStreamer's I420 path does.
_I420_FORMATS = frozenset({"yuv420p", "yuvj420p"})
# Consecutive undecodable packets tolerated before giving up (GStreamer's decoders also skip
# a few broken frames before erroring out).
_MAX_CONSECUTIVE_ERRORS = 10


class AvSource:
    """A :class:`~engine.sources.base.Source` that decodes a video file with PyAV.

    Args:
        uri: A file path or ``file://`` URI, or an already parsed :class:`SourceUri`.
        source_id: Name of the source in frames and per-source state.
        threads: Decoder threads; 0 lets FFmpeg choose (frame and slice threading).
        keep_every: Yield only every ``keep_every``-th decoded frame (the others are never
            converted to BGR; see :class:`engine.sources.gst.GstSource`).

    Raises:
        ConfigError: ``uri`` is not a file, or an argument is invalid.
    """

    def __init__(
        self, uri: str | SourceUri, *, source_id: str = "cam0", threads: int = 0, keep_every: int = 1
    ) -> None:
        self._target = uri if isinstance(uri, SourceUri) else parse_uri(uri)
        if self._target.kind != "file":
            raise ConfigError(
                f"the PyAV reader reads video files only, got {self._target.kind} source "
                f"{self._target.display}; use the GStreamer backend"
            )
        if not source_id:
            raise ConfigError("source_id must be a non-empty string")
        if threads < 0:
            raise ConfigError(f"threads must be >= 0, got {threads!r}")
        self._keep_every = check_int("keep_every", keep_every, low=1)
        self._source_id = source_id
        self._threads = threads
        self._stop = threading.Event()
        # Held while FFmpeg works on the container, so close() from another thread never
        # frees it under a running decode.
        self._lock = threading.Lock()
        self._container: Any = None
        self._stream: Any = None
        self._info: SourceInfo | None = None
        self._declared: DeclaredLength | None = None
        self._clock: FileClock | None = None
        self._start_s = Fraction(0)
        self._started = False

    @property
    def uri(self) -> str:
        """The file path."""
        return self._target.display

    def open(self) -> SourceInfo:
        """Open the file and read its headers.

        Returns:
            Size, frame rate and declared frame count from the container.

        Raises:
            SourceError: The file is missing, not a media file, or has no video stream.
        """
        if self._info is not None:
            return self._info
        if self._stop.is_set():
            raise SourceError(f"source {self._source_id} ({self.uri}) is closed")
        import av

        path = Path(self._target.location)
        if not path.is_file():
            raise SourceError(missing_file_message(path, self.uri))
        try:
            container = av.open(str(path))
        except av.FFmpegError as error:
            raise SourceError(f"cannot read {self.uri}: {_reason(error)} (not a video file?)") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"no video stream in {self.uri}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self._threads
        rate = nominal_rate(stream.average_rate or stream.guessed_rate)
        self._declared = declared_length(container, stream)
        self._clock = FileClock(
            rate=rate,
            index_based="avi" in container.format.name.split(","),
            display=self.uri,
        )
        self._start_s = (
            Fraction(stream.start_time) * stream.time_base
            if stream.start_time is not None and stream.time_base
            else Fraction(0)
        )
        with self._lock:
            if self._stop.is_set():
                container.close()
                raise SourceError(f"source {self._source_id} ({self.uri}) closed while opening")
            self._container, self._stream = container, stream
        self._info = SourceInfo(
            source_id=self._source_id,
            uri=self.uri,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate is not None else None,
            live=False,
            frame_count=self._declared.frames if self._declared else None,
        )
        _log.info(
            "opened %s (%s) with PyAV: %dx%d, %s fps, %s frames",
            self._source_id,
            self.uri,
            self._info.width,
            self._info.height,
            self._info.fps,
            self._info.frame_count,
        )
        return self._info

    def frames(self) -> Iterator[Frame]:
        """Yield decoded frames until the end of the file or ``close()``.

        Raises:
            SourceError: After yielding every frame decoded before it: a read error, more
                than a few consecutive undecodable packets, or a file that ends well before its
                declared frame count (truncated).
        """
        if self._info is None:
            raise SourceError(f"source {self._source_id}: call open() before frames()")
        if self._started:
            raise SourceError(f"source {self._source_id}: frames() can only be iterated once")
        self._started = True
        import av

        index = 0
        consecutive_errors = 0
        with self._lock:
            if self._container is None:
                return
            packets = self._container.demux(self._stream)
        while True:
            with self._lock:
                if self._stop.is_set() or self._container is None:
                    return
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.FFmpegError as error:
                    raise SourceError(f"cannot read {self.uri}: {_reason(error)}") from None
                try:
                    decoded = packet.decode()
                    consecutive_errors = 0
                except av.InvalidDataError as error:
                    consecutive_errors += 1
                    _log.debug("%s: undecodable packet skipped: %s", self.uri, _reason(error))
                    if consecutive_errors > _MAX_CONSECUTIVE_ERRORS:
                        raise SourceError(
                            f"cannot decode {self.uri}: {_reason(error)} "
                            f"({consecutive_errors} broken packets in a row)"
                        ) from None
                    continue
                except av.FFmpegError as error:
                    raise SourceError(f"cannot decode {self.uri}: {_reason(error)}") from None
                frames = [
                    self._make_frame(frame, index + k)
                    for k, frame in enumerate(decoded)
                    if (index + k) % self._keep_every == 0
                ]
            yield from frames
            index += len(decoded)
        check_length(index, self._declared, self.uri)

    def close(self) -> None:
        """Close the file; idempotent and safe from any thread."""
        self._stop.set()
        with self._lock:
            container, self._container = self._container, None
        if container is not None:
            container.close()
            _log.debug("closed %s", self.uri)

    def _make_frame(self, frame: Any, index: int) -> Frame:
        if frame.format.name not in _I420_FORMATS:
            frame = frame.reformat(format="yuv420p")
        y, u, v = (_plane_array(plane) for plane in frame.planes[:3])
        stream_ns = None
        if frame.pts is not None and frame.time_base:
            stream_ns = round((frame.pts * frame.time_base - self._start_s) * 1_000_000_000)
        pts_ns = self._clock.pts_ns(index, stream_ns) if self._clock else (stream_ns or 0)
        return Frame(source_id=self._source_id, index=index, pts_ns=pts_ns, image=i420_to_bgr(y, u, v))


def _plane_array(plane: Any) -> np.ndarray:
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split()).rstrip(".")
