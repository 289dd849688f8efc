"""Supervised live sources: reconnect on error, end of stream or stall, forever by default.

A camera drops off the network, reboots, or freezes; the engine must notice and carry on
when it comes back. :class:`SupervisedSource` wraps a factory of fresh sources (a GStreamer
pipeline that failed is not restarted, it is replaced) and loops:

1. connect (``open()``); on failure wait an exponential backoff with jitter and try again
   (a camera that is down at start-up is just a first outage);
2. read frames until the source raises, ends, or delivers nothing for ``stall_timeout_s``
   (a watchdog thread closes a source that hangs);
3. report the lost segment, wait the first backoff step, go to 1.

Each connection is a *segment* (1, 2, ...). A :class:`SegmentListener` hears when one starts
and ends; the pipeline resets per-source stage state at the end of each (trackers restart, so
ids are never glued across a gap). Frames leave with one index sequence and one timeline for
the whole run: ``index`` keeps counting across segments and ``pts_ns`` is the time since the
source's first frame (each segment's own clock shifted to the wall-clock time it started), so
a gap in the stream is a gap in ``pts_ns``.

Logging: each loss is one WARNING and each return one INFO line; the failed attempts in
between are DEBUG. Every message carries the URI with credentials masked.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, SourceError
from engine.frame import Frame, SourceInfo
from engine.sources import open_source
from engine.sources.base import SegmentListener, Source
from engine.sources.uri import mask_credentials, parse_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectPolicy:
    """When and how often a live source is reconnected.

    The defaults reconnect forever and pick a camera up at most ``backoff_max_s`` (plus the
    time to connect) after it returns; a failed attempt on a refused connection costs a few
    milliseconds, so retrying every second is cheap.

    Attributes:
        max_attempts: Consecutive failed connection attempts before the source gives up and
            fails (a successful connection resets the count); None retries forever.
        backoff_initial_s: Wait before the first retry.
        backoff_max_s: Longest wait between attempts.
        backoff_multiplier: Growth of the wait after each failed attempt.
        jitter: Fraction of each wait that is random (``wait * uniform(1 - jitter, 1)``), so
            many cameras behind one switch do not reconnect in lockstep.
        stall_timeout_s: A connected source that delivers no frame for this long is
            reconnected (the watchdog).
        connect_timeout_s: How long one connection attempt may take to deliver its first frame.
    """

    max_attempts: int | None = None
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 1.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.5
    stall_timeout_s: float = 5.0
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigError(f"max_attempts: expected a positive integer or null, got {self.max_attempts!r}")
        for name in ("backoff_initial_s", "backoff_max_s", "stall_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name}: expected a positive number of seconds, got {value!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )
        if not self.backoff_multiplier >= 1:
            raise ConfigError(f"backoff_multiplier: expected a number >= 1, got {self.backoff_multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter: expected a fraction in [0, 1], got {self.jitter!r}")

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """The wait before the next attempt after ``failures`` consecutive failures (>= 0)."""
        base = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** max(failures, 0))
        return base * (1.0 - self.jitter * rng.random())


def reconnects_by_default(uri: str) -> bool:
    """Whether a source URI is supervised unless the config says otherwise.

    Cameras and network streams (RTSP, V4L2) and endless ``test://`` pictures are; files,
    finite test sources and ``synthetic://`` scenes end for good.
    """
    if uri.strip().lower().startswith("synthetic://"):
        return False
    target = parse_uri(uri)
    if target.kind == "test":
        return target.test is not None and target.test.frames is None
    return target.kind in ("rtsp", "v4l2")


class SupervisedSource:
    """A :class:`~engine.sources.base.Source` that reconnects (see the module docstring).

    Args:
        factory: Makes a fresh, unopened source for each connection attempt.
        source_id: Name of the source in frames and per-source state.
        uri: What to show in logs and ``SourceInfo.uri`` (masked here again, to be sure).
        policy: Backoff, attempts, watchdog.
        seed: Seed of the jitter (tests); None is random.
    """

    def __init__(
        self,
        factory: Callable[[], Source],
        *,
        source_id: str,
        uri: str,
        policy: ReconnectPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        if not source_id:
            raise ConfigError("source_id must be a non-empty string")
        self._factory = factory
        self.source_id = source_id
        self.uri = mask_credentials(uri)
        self.policy = policy or ReconnectPolicy()
        self._rng = random.Random(seed)
        self._listeners: list[SegmentListener] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: Source | None = None
        self._last_frame_s: float | None = None  # None while not connected
        self._stalled = False
        #: Segments started so far (the current one's number while connected).
        self.segment = 0
        #: Connection attempts that failed, over the run.
        self.failed_attempts = 0
        self._last_error = ""

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed ("" before any failed), credentials masked."""
        return self._last_error

    def subscribe(self, listener: SegmentListener) -> None:
        """Hear about segments; call before :meth:`frames`."""
        self._listeners.append(listener)

    def open(self) -> SourceInfo:
        """Return provisional facts; connecting happens in :meth:`frames`, so a camera that
        is down at start-up delays nothing. Size and rate are 0/None until it connects."""
        if self._stop.is_set():
            raise SourceError(f"source {self.source_id} ({self.uri}) is closed")
        return SourceInfo(source_id=self.source_id, uri=self.uri, width=0, height=0, fps=None, live=True)

    def frames(self) -> Iterator[Frame]:
        """Yield frames across reconnections until :meth:`close`.

        Raises:
            SourceError: ``max_attempts`` consecutive connection attempts failed.
        """
        watchdog = threading.Thread(
            target=self._watch, name=f"vistream-watchdog-{self.source_id}", daemon=True
        )
        watchdog.start()
        index = 0
        origin_ns: int | None = None  # capture time of the first frame of the run
        last_pts_ns = -1
        failures = 0
        lost_reason: str | None = None
        down_since_s = time.monotonic()
        try:
            while not self._stop.is_set():
                connected = self._connect(failures)
                if connected is None:
                    if self._stop.is_set():
                        return
                    failures += 1
                    if self.policy.max_attempts is not None and failures >= self.policy.max_attempts:
                        raise SourceError(
                            f"{self.uri}: gave up after {failures} failed connection attempts "
                            f"(last: {self._last_error})"
                        )
                    self._stop.wait(self.policy.delay_s(failures - 1, self._rng))
                    continue
                source, info = connected
                self.segment += 1
                reason = lost_reason or (self._last_error if failures else None)
                self._announce(info, failures + 1, time.monotonic() - down_since_s, reason)
                failures = 0
                offset_ns: int | None = None
                lost_reason = "end of stream"
                try:
                    for frame in source.frames():
                        self._last_frame_s = time.monotonic()
                        if origin_ns is None:
                            origin_ns = frame.capture_ns
                        if offset_ns is None:  # this segment's clock starts at its wall-clock time
                            offset_ns = frame.capture_ns - origin_ns - frame.pts_ns
                        frame.pts_ns = max(frame.pts_ns + offset_ns, last_pts_ns + 1)
                        last_pts_ns = frame.pts_ns
                        frame.index = index
                        frame.source_id = self.source_id
                        index += 1
                        yield frame
                        if self._stop.is_set():
                            return
                except SourceError as error:
                    lost_reason = mask_credentials(str(error))
                finally:
                    self._disconnect(source)
                if self._stop.is_set():
                    return
                if self._stalled:
                    lost_reason = f"no frame for {self.policy.stall_timeout_s:g} s"
                down_since_s = time.monotonic()
                logger.warning("%s (%s) lost: %s; reconnecting", self.source_id, self.uri, lost_reason)
                for listener in self._listeners:
                    listener.segment_ended(self.source_id, self.segment, lost_reason)
                self._stop.wait(self.policy.delay_s(0, self._rng))
        finally:
            self._stop.set()  # ends the watchdog
            self._disconnect(None)

    def close(self) -> None:
        """Stop reading and reconnecting; idempotent and safe from any thread."""
        self._stop.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.close()

    # -- internals --------------------------------------------------------------------------

    def _connect(self, failures: int) -> tuple[Source, SourceInfo] | None:
        """One attempt: an opened source and its facts, or None (logged) when it failed."""
        try:
            source = self._factory()
        except SourceError as error:  # e.g. GStreamer missing: retried like any failure
            self._note_failure(failures, mask_credentials(str(error)))
            return None
        with self._lock:
            if self._stop.is_set():
                source.close()
                return None
            self._current = source
        try:
            info = source.open()
        except SourceError as error:
            self._disconnect(source)
            self._note_failure(failures, mask_credentials(str(error)))
            return None
        self._stalled = False
        self._last_frame_s = time.monotonic()
        return source, info

    def _note_failure(self, failures: int, reason: str) -> None:
        self.failed_attempts += 1
        self._last_error = reason
        if failures == 0 and self.segment == 0:  # down at start-up: say so once
            logger.warning("%s (%s) is not reachable: %s; retrying", self.source_id, self.uri, reason)
        else:
            logger.debug("%s: connection attempt %d failed: %s", self.source_id, failures + 1, reason)

    def _disconnect(self, source: Source | None) -> None:
        with self._lock:
            if source is None:
                source = self._current
            if source is self._current:
                self._current = None
            self._last_frame_s = None
        if source is not None:
            try:
                source.close()
            except Exception:  # a source that cannot close must not stop the reconnecting
                logger.exception("%s: closing the lost connection failed", self.source_id)

    def _announce(self, info: SourceInfo, attempts: int, down_s: float, reason: str | None) -> None:
        info = SourceInfo(
            source_id=self.source_id,
            uri=self.uri,
            width=info.width,
            height=info.height,
            fps=info.fps,
            live=True,
            frame_count=None,
        )
        event: dict[str, Any] = {
            "type": "source_connected" if self.segment == 1 else "source_reconnected",
            "segment": self.segment,
            "attempts": attempts,
            "down_s": round(down_s, 3),
        }
        if reason is not None:
            event["reason"] = reason
        if self.segment == 1:
            logger.info("%s (%s) connected after %d attempt(s)", self.source_id, self.uri, attempts)
        else:
            logger.info(
                "%s (%s) reconnected after %.1f s (%d attempt(s)): segment %d",
                self.source_id,
                self.uri,
                down_s,
                attempts,
                self.segment,
            )
        for listener in self._listeners:
            listener.segment_started(self.source_id, self.segment, info, event)

    def _watch(self) -> None:
        """Close a connected source that has delivered nothing for ``stall_timeout_s``."""
        timeout_s = self.policy.stall_timeout_s
        while not self._stop.wait(min(0.25, timeout_s / 4)):
            with self._lock:
                last, current = self._last_frame_s, self._current
            if last is not None and current is not None and time.monotonic() - last > timeout_s:
                logger.debug("%s: watchdog: no frame for %.1f s", self.source_id, timeout_s)
                self._stalled = True
                with self._lock:
                    self._last_frame_s = None
                current.close()


def open_supervised(
    uri: str,
    *,
    source_id: str,
    policy: ReconnectPolicy | None = None,
    backend: str = "auto",
    rtsp_latency_ms: int = 200,
) -> SupervisedSource:
    """A supervised source for a camera or stream URI (see :func:`engine.sources.open_source`)."""

    policy = policy or ReconnectPolicy()
    parse_uri(uri)  # a malformed URI is a configuration error now, not a retry loop

    def factory() -> Source:
        return open_source(
            uri,
            source_id=source_id,
            backend=backend,
            connect_timeout_s=policy.connect_timeout_s,
            stall_timeout_s=policy.stall_timeout_s,
            rtsp_latency_ms=rtsp_latency_ms,
        )

    # The checks a connection attempt makes, once, now: a source this install cannot read at
    # all (no GStreamer for a camera) is an error at start-up, not an endless retry loop.
    factory().close()
    return SupervisedSource(factory, source_id=source_id, uri=parse_uri(uri).display, policy=policy)
