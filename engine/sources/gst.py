"""GStreamer reader: files, RTSP cameras, V4L2 devices and test pictures, through an appsink.

Pipelines (decoders and converters are GStreamer's; frames leave as I420 and are converted
to BGR by :mod:`engine.sources.decoding`, exactly like the PyAV reader):

- file: ``uridecodebin uri=file://… ! videoconvert ! video/x-raw,format=I420 ! appsink``
- RTSP: ``rtspsrc location=… protocols=tcp latency=… ! application/x-rtp,media=video !
  decodebin ! videoconvert ! … ! appsink``
- V4L2: ``v4l2src device=… ! decodebin ! videoconvert ! … ! appsink`` (raw or MJPEG cameras)
- test: ``videotestsrc is-live=… pattern=… num-buffers=… ! video/x-raw,width,height,framerate
  ! videoconvert ! … ! appsink``

Threads: no GLib main loop is needed. ``frames()`` pulls with ``try_pull_sample`` in short
slices and polls the bus between them, so errors surface and ``close()`` — from any thread —
stops it within one slice. Files use ``sync=false`` and a bounded, non-dropping appsink queue
(every frame, as fast as it is consumed); live sources drop the oldest frames when the
consumer falls behind, so latency stays bounded.

Decoder threads: FFmpeg decoders (``avdec_*``) inside the bins get ``max-threads`` from
``decoder_threads`` (default 1). The engine already keeps every core busy with the model and
with other cameras; a decoder's own frame threads only add hand-offs. Measured on the 320x240
MPEG-4 overpass video on the 2-core machine: 0.16-0.21 ms CPU per frame with one thread against
0.34-0.41 ms with FFmpeg's choice (``benchmarks`` README, CPU section). Set 0 for FFmpeg's
choice (one big stream decoded as fast as possible on an otherwise idle machine).

Timestamps: files follow :class:`~engine.sources.decoding.FileClock` (the same rule as the
PyAV reader); live and test sources carry GStreamer's buffer times (the pipeline's running
time). Endings: a file that stops far short of its declared length raises after its frames;
an RTSP or V4L2 stream that ends after a warning (rtspsrc's dropped connection) raises too.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import time
import weakref
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
    i420_buffer_to_bgr,
    missing_file_message,
    nominal_rate,
    probe_declared_length,
)
from engine.sources.uri import SourceUri, mask_credentials, parse_uri

_log = logging.getLogger(__name__)

_PULL_SLICE_NS = 100_000_000  # how long one try_pull_sample may block: close() latency bound
_BUS_POLL_EVERY = 32  # frames between bus polls while frames flow (errors also stop the flow)
_I420 = "video/x-raw,format=I420"
_DEBUG_DETAIL = re.compile(r"\(\): /\S+?: (.+)$")


@functools.cache
def prefer_gnu_unwinder() -> bool:
    """Put libgcc's unwinder in the process's global symbol scope before GStreamer loads.

    Why: ``libgstreamer-1.0`` links ``libunwind.so.8`` (for its leak tracer's backtraces),
    and PyGObject opens it with ``RTLD_GLOBAL``. ``libunwind`` exports the GCC unwinding ABI
    too (``_Unwind_RaiseException``...), so a ``libstdc++`` loaded after it binds its
    ``throw`` to libunwind's copy, which cannot unwind through ONNX Runtime's frames: the
    first C++ exception (a corrupt model, a wrong input shape) ends in ``std::terminate``,
    exit 134/139 with no message. With ``libgcc_s`` in the global scope first, every later
    library binds to the unwinder it was built for and the exception reaches Python as an
    error. Idempotent; does nothing off glibc.

    Returns:
        True when ``libgcc_s`` is now global (or was already).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:  # a musl system: no libgcc_s, and no such clash to avoid
        return False
    return True


@functools.cache
def _gst() -> Any | None:
    """Import and initialise GStreamer once; None when PyGObject or GStreamer is missing."""
    prefer_gnu_unwinder()  # before libgstreamer (and its libunwind) enters the process
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst, GstApp, GstVideo  # noqa: F401  (GstApp: appsink API)
    except (ImportError, ValueError) as error:
        _log.debug("GStreamer unavailable: %s", error)
        return None
    ok, _argv = Gst.init_check(None)
    if not ok:
        _log.debug("GStreamer unavailable: Gst.init_check failed")
        return None
    return (Gst, GstVideo)


def gstreamer_available() -> bool:
    """Return True when GStreamer can be used through PyGObject (``gi``) in this process."""
    return _gst() is not None


def _limit_decoder_threads(_pipeline: Any, _bin: Any, element: Any, threads: int) -> None:
    """``deep-element-added`` handler: give FFmpeg decoders ``threads`` (module docstring)."""
    factory = element.get_factory()
    if factory is not None and factory.get_name().startswith("avdec_"):
        if element.find_property("max-threads") is not None:
            element.set_property("max-threads", threads)


class GstSource:
    """A :class:`~engine.sources.base.Source` decoded by GStreamer.

    Args:
        uri: A file path, ``file://`` URI, ``rtsp://`` URL, ``/dev/videoN`` or ``test://`` URI
            (see :mod:`engine.sources.uri`), or an already parsed :class:`SourceUri`.
        source_id: Name of the source in frames and per-source state.
        connect_timeout_s: How long ``open()`` waits for the first decoded frame (connecting,
            negotiating, prerolling) before raising ``SourceError``. Also the RTSP TCP timeout.
        stall_timeout_s: ``frames()`` raises ``SourceError`` when no frame arrives for this
            long while it waits (a frozen camera or network); None waits forever.
        rtsp_latency_ms: Jitter buffer of RTSP sources, in milliseconds.
        max_buffers: Decoded frames queued in the appsink; None means 8 for files and finite
            test sources (never dropped) and 2 for live sources (oldest dropped).
        keep_every: Yield only every ``keep_every``-th decoded frame (index 0, n, 2n...; the
            others are never converted to BGR). A live replay at a quarter of a recording's
            rate would otherwise convert four frames to keep one.
        decoder_threads: ``max-threads`` of FFmpeg decoders in the pipeline; 0 lets FFmpeg
            choose (module docstring).
    """

    def __init__(
        self,
        uri: str | SourceUri,
        *,
        source_id: str = "cam0",
        connect_timeout_s: float = 10.0,
        stall_timeout_s: float | None = 10.0,
        rtsp_latency_ms: int = 200,
        max_buffers: int | None = None,
        keep_every: int = 1,
        decoder_threads: int = 1,
    ) -> None:
        self._target = uri if isinstance(uri, SourceUri) else parse_uri(uri)
        if not source_id:
            raise ConfigError("source_id must be a non-empty string")
        if not connect_timeout_s > 0:
            raise ConfigError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        if stall_timeout_s is not None and not stall_timeout_s > 0:
            raise ConfigError(f"stall_timeout_s must be > 0 or None, got {stall_timeout_s!r}")
        if rtsp_latency_ms < 0:
            raise ConfigError(f"rtsp_latency_ms must be >= 0, got {rtsp_latency_ms!r}")
        if max_buffers is not None and max_buffers < 1:
            raise ConfigError(f"max_buffers must be >= 1, got {max_buffers!r}")
        self._keep_every = check_int("keep_every", keep_every, low=1)
        self._decoder_threads = check_int("decoder_threads", decoder_threads, low=0)
        self._source_id = source_id
        self._connect_timeout_s = float(connect_timeout_s)
        self._stall_timeout_s = stall_timeout_s
        self._rtsp_latency_ms = int(rtsp_latency_ms)
        self._max_buffers = max_buffers or (2 if self._target.live else 8)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pipeline: Any = None
        self._finalizer: weakref.finalize | None = None
        self._sink: Any = None
        self._bus: Any = None
        self._error: SourceError | None = None
        self._warning: str | None = None
        self._first_sample: Any = None
        self._info: SourceInfo | None = None
        self._declared: DeclaredLength | None = None
        self._clock: FileClock | None = None
        self._layout: tuple[Any, tuple[int, ...], tuple[int, ...]] | None = None
        self._started = False

    @property
    def uri(self) -> str:
        """The source URI with credentials masked."""
        return self._target.display

    def open(self) -> SourceInfo:
        """Start the pipeline and wait for the first frame.

        Returns:
            The source's facts: size and frame rate from the negotiated caps, the declared
            frame count of files (None for live sources), ``live``.

        Raises:
            SourceError: GStreamer is missing, the file does not exist or is not a video, the
                camera or server cannot be reached, or no frame came within
                ``connect_timeout_s``.
        """
        if self._info is not None:
            return self._info
        if self._stop.is_set():
            raise SourceError(f"source {self._source_id} ({self.uri}) is closed")
        modules = _gst()
        if modules is None:
            raise SourceError(
                f"cannot read {self.uri}: GStreamer is not available through PyGObject "
                "(install the 'gst' extra and the system GStreamer plugins)"
            )
        Gst = modules[0]
        target = self._target
        if target.kind == "file":
            path = Path(target.location)
            if not path.is_file():
                raise SourceError(missing_file_message(path, target.display))
            # Raises for a readable container without video; None when PyAV cannot read it
            # (GStreamer then says why).
            self._declared = probe_declared_length(path)
        try:
            self._start(Gst)
            sample = self._wait_first_sample(Gst)
            self._info = self._describe(Gst, sample)
        except BaseException:
            self.close()
            raise
        self._first_sample = sample
        info = self._info
        _log.info(
            "opened %s (%s): %dx%d, %s fps, %s, %s frames",
            info.source_id,
            info.uri,
            info.width,
            info.height,
            info.fps,
            "live" if info.live else "not live",
            info.frame_count,
        )
        return info

    def frames(self) -> Iterator[Frame]:
        """Yield decoded frames until the end of the stream, ``close()`` or an error.

        Raises:
            SourceError: After yielding every frame decoded before it: a GStreamer error
                (one line, credentials masked), a stall longer than ``stall_timeout_s``, or a
                file that ends well before its declared frame count (truncated).
        """
        if self._info is None:
            raise SourceError(f"source {self._source_id}: call open() before frames()")
        if self._started:
            raise SourceError(f"source {self._source_id}: frames() can only be iterated once")
        self._started = True
        Gst = _gst()[0]  # type: ignore[index]  # open() succeeded, so GStreamer is there
        sink, stop = self._sink, self._stop
        pending, self._first_sample = self._first_sample, None
        index = 0
        waiting_since: float | None = None
        while not stop.is_set():
            sample = pending if pending is not None else sink.try_pull_sample(_PULL_SLICE_NS)
            pending = None
            if sample is not None:
                waiting_since = None
                if index % self._keep_every == 0:
                    yield self._make_frame(Gst, sample, index)
                index += 1
                if index % _BUS_POLL_EVERY == 0:
                    self._poll_bus(Gst)
                if self._error is None:
                    continue
            elif stop.is_set():
                return
            else:
                self._poll_bus(Gst)
            if self._error is not None:
                # The queue still holds frames decoded before the error: deliver them first
                # (at most a queue's worth: an element that keeps producing is not waited for).
                for _ in range(self._max_buffers):
                    if stop.is_set() or (sample := sink.try_pull_sample(0)) is None:
                        break
                    yield self._make_frame(Gst, sample, index)
                    index += 1
                raise self._error
            if sink.is_eos():
                _log.info("%s: end of stream after %d frames", self.uri, index)
                if self._target.kind == "file":
                    check_length(index, self._declared, self.uri)
                elif self._target.kind in ("rtsp", "v4l2") and self._warning is not None:
                    # rtspsrc turns a dropped connection into a warning plus end of stream;
                    # for a camera that is a failure, not the end of a recording.
                    raise SourceError(f"{self.uri}: stream ended after {index} frames: {self._warning}")
                return
            now = time.monotonic()
            waiting_since = waiting_since or now
            if self._stall_timeout_s is not None and now - waiting_since > self._stall_timeout_s:
                raise SourceError(
                    f"no frame from {self.uri} for {self._stall_timeout_s:g} s (after {index} frames)"
                )

    def close(self) -> None:
        """Stop the pipeline and release it; idempotent and safe from any thread."""
        self._stop.set()
        with self._lock:
            finalizer, self._finalizer = self._finalizer, None
            self._pipeline = None
        if finalizer is not None:
            finalizer()  # sets the pipeline to NULL, once
            _log.debug("closed %s", self.uri)

    # -- pipeline construction ------------------------------------------------------------

    def _describe_pipeline(self) -> str:
        target = self._target
        live = target.live
        appsink = (
            f"appsink name=sink emit-signals=false sync=false enable-last-sample=false "
            f"max-buffers={self._max_buffers} drop={'true' if live else 'false'}"
        )
        convert = f"videoconvert ! {_I420} ! {appsink}"
        if target.kind == "file":
            return f"uridecodebin name=src ! {convert}"
        if target.kind == "rtsp":
            return (
                f"rtspsrc name=src protocols=tcp latency={self._rtsp_latency_ms} "
                f"! application/x-rtp,media=video ! decodebin ! {convert}"
            )
        if target.kind == "v4l2":
            return f"v4l2src name=src ! decodebin ! {convert}"
        test = target.test
        if test is None:  # parse_uri always fills it for test://
            raise SourceError(f"test source without parameters: {target.display}")
        frames = f" num-buffers={test.frames}" if test.frames is not None else ""
        return (
            f"videotestsrc name=src is-live={'true' if test.live else 'false'} "
            f"pattern={test.pattern}{frames} ! video/x-raw,width={test.width},"
            f"height={test.height},framerate={test.fps.numerator}/{test.fps.denominator} "
            f"! {convert}"
        )

    def _start(self, Gst: Any) -> None:
        from gi.repository import GLib

        description = self._describe_pipeline()
        try:
            pipeline = Gst.parse_launch(description)
        except GLib.Error as error:
            raise SourceError(
                f"cannot build the GStreamer pipeline for {self.uri}: {error.message}"
            ) from None
        # Decoders are created inside the bins once the stream is typed: set them up then.
        # A plain function with the count, not a bound method: the pipeline must not hold
        # this source alive (its finalizer stops the pipeline when the source is dropped).
        pipeline.connect("deep-element-added", _limit_decoder_threads, self._decoder_threads)
        source = pipeline.get_by_name("src")
        target = self._target
        # Locations are set as properties, not spliced into the launch string: paths and
        # passwords may contain spaces, quotes or '!'.
        if target.kind == "file":
            source.set_property("uri", Gst.filename_to_uri(target.location))
        elif target.kind == "rtsp":
            source.set_property("location", target.location)  # without user and password
            if target.username is not None:
                # As properties, so GStreamer's own debug log (rtspsrc:6) never prints them.
                source.set_property("user-id", target.username)
            if target.password is not None:
                source.set_property("user-pw", target.password)
            source.set_property("tcp-timeout", int(self._connect_timeout_s * 1_000_000))
        elif target.kind == "v4l2":
            source.set_property("device", target.location)
        with self._lock:
            if self._stop.is_set():
                raise SourceError(f"source {self._source_id} ({self.uri}) closed while opening")
            self._pipeline = pipeline
            # GStreamer elements must reach NULL before they are freed, also when the caller
            # forgets close() or the interpreter exits first.
            self._finalizer = weakref.finalize(self, pipeline.set_state, Gst.State.NULL)
        self._sink = pipeline.get_by_name("sink")
        self._bus = pipeline.get_bus()
        _log.debug("%s: pipeline %s", self.uri, mask_credentials(description))
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self._poll_bus(Gst)
            raise self._error or SourceError(f"cannot start the GStreamer pipeline for {self.uri}")

    def _wait_first_sample(self, Gst: Any) -> Any:
        deadline = time.monotonic() + self._connect_timeout_s
        while True:
            if self._stop.is_set():
                raise SourceError(f"source {self._source_id} ({self.uri}) closed while opening")
            sample = self._sink.try_pull_sample(min(_PULL_SLICE_NS, 50_000_000))
            if sample is not None:
                return sample
            self._poll_bus(Gst)
            if self._error is not None:
                raise self._error
            if self._sink.is_eos():
                raise SourceError(f"no video frames in {self.uri}")
            if time.monotonic() > deadline:
                raise SourceError(
                    f"timed out after {self._connect_timeout_s:g} s waiting for the first "
                    f"frame from {self.uri}"
                )

    def _describe(self, Gst: Any, sample: Any) -> SourceInfo:
        structure = sample.get_caps().get_structure(0)
        width = structure.get_int("width")[1]
        height = structure.get_int("height")[1]
        ok, rate_num, rate_den = structure.get_fraction("framerate")
        rate = nominal_rate(Fraction(rate_num, rate_den)) if ok and rate_den else None
        target = self._target
        frame_count: int | None = None
        if target.kind == "file":
            frame_count = self._declared.frames if self._declared else self._query_length(Gst, rate)
            # AVI has no presentation timestamps (see FileClock); find its demuxer.
            self._clock = FileClock(
                rate=rate, index_based=self._contains(Gst, "avidemux"), display=target.display
            )
        elif target.kind == "test" and target.test is not None:
            frame_count = target.test.frames
        return SourceInfo(
            source_id=self._source_id,
            uri=target.display,
            width=width,
            height=height,
            fps=float(rate) if rate is not None else None,
            live=target.live,
            frame_count=frame_count,
        )

    def _query_length(self, Gst: Any, rate: Fraction | None) -> int | None:
        ok, frames = self._pipeline.query_duration(Gst.Format.DEFAULT)
        if ok and frames > 0:
            return int(frames)
        ok, duration_ns = self._pipeline.query_duration(Gst.Format.TIME)
        if ok and duration_ns > 0 and rate is not None:
            return round(Fraction(duration_ns, 1_000_000_000) * rate)
        return None

    def _contains(self, Gst: Any, factory_name: str) -> bool:
        """Whether the (auto-plugged) pipeline holds an element made by ``factory_name``."""
        iterator = self._pipeline.iterate_recurse()
        while True:
            result, element = iterator.next()
            if result != Gst.IteratorResult.OK:
                return False
            factory = element.get_factory()
            if factory is not None and factory.get_name() == factory_name:
                return True

    # -- per frame --------------------------------------------------------------------------

    def _make_frame(self, Gst: Any, sample: Any, index: int) -> Frame:
        buffer = sample.get_buffer()
        image = self._to_bgr(sample, buffer)
        pts = buffer.pts
        pts_ns: int | None = None if pts == Gst.CLOCK_TIME_NONE else int(pts)
        if self._clock is not None:
            stream_ns = None
            if pts_ns is not None and not self._clock.index_based:
                stream_ns = sample.get_segment().to_stream_time(Gst.Format.TIME, pts_ns)
                stream_ns = None if stream_ns == Gst.CLOCK_TIME_NONE else int(stream_ns)
            pts_ns = self._clock.pts_ns(index, stream_ns)
        return Frame(source_id=self._source_id, index=index, pts_ns=pts_ns or 0, image=image)

    def _to_bgr(self, sample: Any, buffer: Any) -> np.ndarray:
        GstVideo = _gst()[1]  # type: ignore[index]  # open() succeeded, so GStreamer is there
        caps = sample.get_caps()
        if self._layout is None or not caps.is_equal(self._layout[0]):
            info = GstVideo.VideoInfo.new_from_caps(caps)
            if info is None:
                raise SourceError(f"{self.uri}: unexpected caps {caps.to_string()}")
            self._layout = (
                caps,
                (info.width, info.height),
                tuple(info.stride[:3]) + tuple(info.offset[:3]),
            )
        width, height = self._layout[1]
        strides_offsets = self._layout[2]
        meta = GstVideo.buffer_get_video_meta(buffer)
        if meta is not None:  # a decoder's own row padding, announced per buffer
            strides_offsets = tuple(meta.stride[:3]) + tuple(meta.offset[:3])
        data = np.frombuffer(buffer.extract_dup(0, buffer.get_size()), np.uint8)
        return i420_buffer_to_bgr(data, width, height, strides_offsets[:3], strides_offsets[3:])

    # -- bus --------------------------------------------------------------------------------

    def _poll_bus(self, Gst: Any) -> None:
        """Drain the bus: log warnings, remember the first error, recover a lost clock."""
        bus = self._bus
        if bus is None:
            return
        kinds = Gst.MessageType.ERROR | Gst.MessageType.WARNING | Gst.MessageType.CLOCK_LOST
        while (message := bus.pop_filtered(kinds)) is not None:
            if message.type == Gst.MessageType.ERROR:
                error, debug = message.parse_error()
                _log.debug(
                    "%s: GStreamer error from %s: %s",
                    self.uri,
                    message.src.get_name(),
                    mask_credentials(" ".join((debug or "").split())),
                )
                if self._error is None:
                    reason = _reason(self._target, error.message, debug)
                    self._error = SourceError(f"cannot read {self.uri}: {reason}")
            elif message.type == Gst.MessageType.WARNING:
                warning, debug = message.parse_warning()
                self._warning = _reason(self._target, warning.message, debug)
                _log.warning("%s: %s", self.uri, self._warning)
            elif message.type == Gst.MessageType.CLOCK_LOST:
                with self._lock:
                    pipeline = self._pipeline
                if pipeline is not None:  # the documented recovery: re-select a clock
                    pipeline.set_state(Gst.State.PAUSED)
                    pipeline.set_state(Gst.State.PLAYING)


def _reason(target: SourceUri, message: str, debug: str | None) -> str:
    """One line for a bus message: GStreamer's text plus the detail its debug text ends with."""
    reason = " ".join(mask_credentials(message).split()).rstrip(".")
    # Debug text looks like "file.c(123): function (): /GstPipeline:p/Elem:src: detail".
    match = _DEBUG_DETAIL.search(" ".join((debug or "").split()))
    detail = mask_credentials(match.group(1)).strip().rstrip(".") if match else ""
    if detail and detail.lower() not in reason.lower():
        reason += f" ({detail})"
    if target.kind == "file" and "determine type" in reason:
        reason += " (not a video file?)"
    return reason
