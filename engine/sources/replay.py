"""A video file replayed as a live camera: paced at a frame rate, stale frames dropped.

Benchmarks use it to put N "cameras" on one machine from one recording. Like a camera (and
like :class:`~engine.sources.gst.GstSource` on a live URI, whose appsink keeps the newest
``max-buffers`` and drops the oldest), it produces frames on its own clock whether or not
anyone reads them: a producer thread decodes the file and releases frame ``k`` at
``start + (phase + k) / fps``, stamping ``capture_ns`` at that moment, into a buffer of
``max_buffered_frames`` that drops its oldest frame when full. ``frames()`` hands out what
is buffered, so the age of a frame at the sink is exactly what a camera's frame would have.

Frames keep increasing ``index`` and ``pts_ns`` across loops of the file and across drops
(a dropped frame leaves a gap in ``index``, as a camera's frame counter would).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator

from engine.errors import ConfigError, SourceError
from engine.frame import Frame, SourceInfo
from engine.sources.base import Source

logger = logging.getLogger(__name__)

_POLL_S = 0.1


def replay_decimation(recording_fps: float | None, fps: float | None) -> int:
    """How many decoded frames a replay at ``fps`` may skip per kept one without a change.

    A replay keeps frame ``k`` of the recording when ``k * fps / recording_fps`` reaches a
    new integer; at a whole ratio (60 -> 15 fps: 4) that is every ratio-th frame, which the
    reader can then skip before converting the others
    (``open_source(..., keep_every=...)``). Any other ratio gives 1 (nothing skipped early).
    """
    if not recording_fps or not fps or recording_fps <= fps:
        return 1
    ratio = recording_fps / fps
    whole = round(ratio)
    return whole if abs(ratio - whole) < 1e-6 else 1


class LiveReplaySource:
    """Replays a finite source (a file) as a live one, paced at ``fps``.

    Args:
        open_inner: Creates a fresh, unopened source for the recording (called once per
            loop), e.g. ``lambda: open_source(path, source_id="cam3")``.
        source_id: Name of this live source.
        fps: Release rate; None uses the recording's own rate. A rate below the recording's
            keeps every ``recording_fps / fps``-th frame, as a camera set to a lower rate.
        loop: Start the recording again at its end (otherwise the stream ends).
        phase: Delay of the first frame, in frame periods, so several replays are not in
            lock step (0 <= phase < 1 spreads N cameras over one period).
        max_buffered_frames: Frames kept for the reader before the oldest is dropped.

    Raises:
        ConfigError: An argument is out of range.
    """

    def __init__(
        self,
        open_inner: Callable[[], Source],
        *,
        source_id: str,
        fps: float | None = None,
        loop: bool = True,
        phase: float = 0.0,
        max_buffered_frames: int = 2,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ConfigError(f"replay fps must be a positive number, got {fps!r}")
        if not phase >= 0:
            raise ConfigError(f"replay phase must be >= 0 frame periods, got {phase!r}")
        if max_buffered_frames < 1:
            raise ConfigError(f"max_buffered_frames must be >= 1, got {max_buffered_frames!r}")
        if not source_id:
            raise ConfigError("source_id must be a non-empty string")
        self._open_inner = open_inner
        self._source_id = source_id
        self._fps = fps
        self._loop = loop
        self._phase = phase
        self._buffer: collections.deque[Frame] = collections.deque(maxlen=max_buffered_frames)
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._finished = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._inner: Source | None = None
        self._inner_info: SourceInfo | None = None
        self._info: SourceInfo | None = None
        self.produced_frames = 0
        self.dropped_frames = 0

    def open(self) -> SourceInfo:
        """Open the recording (to learn its size and rate) and start the camera clock.

        Raises:
            SourceError: The recording cannot be opened or has no frame rate and none was given.
        """
        inner = self._open_inner()
        info = inner.open()
        rate = self._fps or info.fps
        if not rate:
            inner.close()
            raise SourceError(f"{info.uri}: no frame rate known; give the replay an fps")
        self._inner, self._inner_info = inner, info
        self._info = SourceInfo(
            source_id=self._source_id,
            uri=f"replay of {info.uri} at {rate:g} fps",
            width=info.width,
            height=info.height,
            fps=float(rate),
            live=True,
            frame_count=None,
        )
        self._thread = threading.Thread(target=self._produce, name=f"replay-{self._source_id}", daemon=True)
        self._thread.start()
        return self._info

    def frames(self) -> Iterator[Frame]:
        """Yield the buffered frames as the camera clock releases them."""
        if self._info is None:
            raise SourceError(f"source {self._source_id}: call open() before frames()")
        while True:
            with self._ready:
                while not self._buffer and not self._finished and not self._stop.is_set():
                    self._ready.wait(_POLL_S)
                if self._buffer:
                    frame = self._buffer.popleft()
                elif self._error is not None:
                    raise SourceError(f"{self._source_id}: {self._error}") from self._error
                else:
                    return
            yield frame

    def close(self) -> None:
        """Stop the clock and the decoder; idempotent, safe from any thread."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        inner = self._inner
        if inner is not None:
            inner.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _produce(self) -> None:
        info, inner_info = self._info, self._inner_info
        if info is None or inner_info is None:  # open() sets both before starting the thread
            return
        fps = float(info.fps or 0.0)
        recording_fps = inner_info.fps or fps
        period_ns = int(round(1e9 / fps))
        start_ns = time.monotonic_ns() + int(self._phase * period_ns)
        released = 0  # frames released on the camera clock (also the next index)
        inner: Source | None = self._inner
        try:
            while not self._stop.is_set():
                if inner is None:  # next loop of the recording
                    inner = self._inner = self._open_inner()
                    inner.open()
                kept_in_loop = -1
                for frame in inner.frames():
                    # Keep the frames a camera at `fps` would have taken from this scene
                    # (by the recording's frame index: a decimating reader skips some).
                    slot = int(frame.index * fps / recording_fps)
                    if slot == kept_in_loop:
                        continue
                    kept_in_loop = slot
                    due_ns = start_ns + released * period_ns
                    while (wait_ns := due_ns - time.monotonic_ns()) > 0:
                        if self._stop.wait(min(wait_ns / 1e9, _POLL_S)):
                            return
                    if self._stop.is_set():
                        return
                    self._release(frame, released, released * period_ns)
                    released += 1
                inner.close()
                inner = None
                if not self._loop or released == 0:
                    break
        except BaseException as error:  # handed to frames(), which raises it
            if not self._stop.is_set():
                self._error = error
                logger.warning("replay %s failed: %s", self._source_id, error)
        finally:
            with self._ready:
                self._finished = True
                self._ready.notify_all()

    def _release(self, frame: Frame, index: int, pts_ns: int) -> None:
        live_frame = dataclasses.replace(
            frame,
            source_id=self._source_id,
            index=index,
            pts_ns=pts_ns,
            capture_ns=time.monotonic_ns(),
        )
        with self._ready:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped_frames += 1  # the deque drops its oldest frame on append
            self._buffer.append(live_frame)
            self.produced_frames += 1
            self._ready.notify()
