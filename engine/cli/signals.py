"""One shutdown path for SIGINT, SIGTERM and SIGHUP, shared by every command that runs a pipeline.

What a stop must survive:

- **A burst.** ``timeout 12 vistream run ...`` signals its child and then its whole process
  group, a terminal's Ctrl-C reaches every process of the foreground group, ``systemctl
  stop`` may send SIGTERM and SIGHUP together: the same stop arrives two or three times within
  microseconds. Every signal within ``grace_s`` of the first is the same stop.
- **A real second request.** A signal after the grace window means "now": the handler writes
  what it can without waiting for anything (``on_force``: the summary, marked
  ``interrupted``) and ends the process with ``128 + signal``. Outputs stay valid because
  they are written that way as the run goes (JSONL flushed per batch, fragmented MP4).
- **A stop that does not end.** A stage that hangs, or a sink stuck on a dead disk, would hold
  a graceful stop forever. After the first signal a timer gives the run ``deadline_s``
  (the drain timeout plus time to finalize); past it, the same forced exit runs.

The class is independent of the CLI's arguments, so the service's workers can use it too.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from engine.checks import check_number

logger = logging.getLogger(__name__)

#: The signals that stop a run (SIGHUP: the terminal or the session went away).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Installs handlers that turn stop signals into one graceful stop, then a forced exit.

    Args:
        on_stop: Called once, on the first signal (e.g. ``pipeline.request_stop``); must be
            safe in a signal handler (set an event, nothing that blocks).
        on_force: Called just before a forced exit with the signal number (e.g. write the
            summary as ``interrupted``); its errors are logged, never raised.
        grace_s: Signals within this many seconds of the first are the same stop.
        deadline_s: After the first signal, the run is forced to end after this long; None
            waits for the graceful stop however long it takes.
        exit: How to end the process (tests replace it); ``os._exit`` by default, because a
            forced exit must not wait for threads that may be the ones hanging.
        clock: Seconds, monotonic.
    """

    def __init__(
        self,
        on_stop: Callable[[], None],
        *,
        on_force: Callable[[int], None] | None = None,
        grace_s: float = 1.0,
        deadline_s: float | None = None,
        exit: Callable[[int], Any] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s = check_number("grace_s", grace_s, low=0)
        self.deadline_s = None if deadline_s is None else check_number("deadline_s", deadline_s, low=0)
        self._on_stop = on_stop
        self._on_force = on_force
        self._exit = exit
        self._clock = clock
        self._first_s: float | None = None
        self._first_signal = 0
        self._forced = threading.Lock()
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}
        #: Signals received, the ones folded into the first stop included.
        self.received = 0

    @property
    def signal_name(self) -> str | None:
        """Name of the signal that stopped the run (``SIGTERM``), or None."""
        return signal.Signals(self._first_signal).name if self._first_signal else None

    def install(self) -> StopSignals:
        """Handle SIGINT, SIGTERM and SIGHUP from now on (main thread only)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back and cancel the deadline (the run has ended)."""
        self._done.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *_exc: object) -> None:
        self.restore()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        now_s = self._clock()
        if self._first_s is None:
            self._first_s, self._first_signal = now_s, signum
            logger.warning("%s: stopping after the frames in flight (again to exit at once)", name)
            self._on_stop()
            if self.deadline_s is not None:
                timer = threading.Thread(
                    target=self._enforce_deadline, args=(signum,), name="vistream-stop-deadline", daemon=True
                )
                timer.start()
            return
        if now_s - self._first_s <= self.grace_s:
            logger.debug("%s within %.1f s of the first stop signal: the same stop", name, self.grace_s)
            return
        logger.warning("second stop signal (%s): exiting at once", name)
        self.force(signum)

    def _enforce_deadline(self, signum: int) -> None:
        if self._done.wait(self.deadline_s):
            return
        logger.error(
            "the stop did not complete within %.1f s (a stage or sink hangs?): exiting at once",
            self.deadline_s,
        )
        self.force(signum)

    def force(self, signum: int) -> None:
        """Run ``on_force`` and end the process with ``128 + signum`` (once, from any thread)."""
        if not self._forced.acquire(blocking=False):
            return  # another thread is already on its way out
        if self._on_force is not None:
            try:
                self._on_force(signum)
            except Exception:  # the exit must happen whatever the last words do
                logger.exception("writing the final outputs failed")
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: S110 - a closed stream: nothing left to say
                pass
        self._exit(128 + signum)
