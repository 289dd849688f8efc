"""One thread per publisher: spool -> broker, in order, at least once.

The loop reads the events after the publisher's position in the spool, publishes them, and
moves the position past what the broker acknowledged. It never blocks the frame loop: the
sink only appends to the spool and calls :meth:`PublisherRunner.notify`.

A broker that dies may lose what it acknowledged just before (Mosquitto keeps messages in
memory between saves; ``benchmarks``/FACTS measured 145 of 1,002 QoS 1 messages lost through
a SIGKILL). So an acknowledgement is only *saved* in the spool once it is ``replay_s`` old,
and when the publisher reconnects, everything acknowledged within the last ``replay_s``
goes out again. Duplicates this makes are dropped by JetStream (``Nats-Msg-Id``, within
its duplicate window, 2 min by default: keep ``replay_s`` below it) and by consumers of
MQTT, which de-duplicate on the event ``id``. A vistream restart resumes from the saved
position, with the same replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from engine.checks import check_int, check_number
from engine.metrics.publish import PublisherStats
from engine.publish.base import Publisher, PublishError
from engine.publish.spool import Spool

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.05
_MAX_BACKOFF_S = 2.0


class PublisherRunner:
    """Drains a spool into one publisher on a background thread (module docstring).

    Args:
        publisher: Where the events go; its ``name`` is its spool cursor.
        spool: The spool the sink appends to.
        batch_size: Events read and published at once.
        replay_s: How long an acknowledgement stays unsaved, and how far back a reconnect
            sends events again.
        ack_timeout_s: How long one batch may wait for the broker's acknowledgements.
        connect_timeout_s: How long one connection attempt may take.
    """

    def __init__(
        self,
        publisher: Publisher,
        spool: Spool,
        *,
        batch_size: int = 256,
        replay_s: float = 10.0,
        ack_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.publisher = publisher
        self.spool = spool
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.replay_s = check_number("replay_s", replay_s, low=0)
        self.ack_timeout_s = check_number("ack_timeout_s", ack_timeout_s, low=0, low_open=True)
        self.connect_timeout_s = check_number("connect_timeout_s", connect_timeout_s, low=0, low_open=True)
        self.name = publisher.name
        self.published = 0
        self.replayed = 0
        self.errors = 0
        self.state = "connecting"
        self._acked = spool.cursor(self.name)
        self._acks: deque[tuple[float, int]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._error_logged = False
        self._thread = threading.Thread(target=self._run, name=f"vistream-publish-{self.name}", daemon=True)

    def start(self) -> None:
        """Connect and start delivering."""
        self.publisher.connect(self.connect_timeout_s)
        self._thread.start()

    def notify(self) -> None:
        """New events were spooled (called by the sink; never blocks)."""
        self._wake.set()

    @property
    def acked_seq(self) -> int:
        """The spool position the broker acknowledged up to."""
        return self._acked

    def stats(self) -> PublisherStats:
        """The publisher's state and counters now."""
        return PublisherStats(
            name=self.name,
            state=self.state,
            connected=self.publisher.connected,
            published=self.published,
            replayed=self.replayed,
            errors=self.errors,
            pending=max(0, self.spool.last_seq() - self._acked),
        )

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until everything spooled so far is acknowledged; False on timeout."""
        target = self.spool.last_seq()
        deadline = time.monotonic() + timeout_s
        while self._acked < target:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop the thread, save what was acknowledged, close the connection."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ack_timeout_s + 2.0)
        # A clean end: every acknowledgement counts as delivered.
        self.spool.commit_cursor(self.name, self._acked)
        self.publisher.close()
        self.state = "closed"

    def _run(self) -> None:
        seen_connections = 0
        backoff_s = 0.05
        while not self._stop.is_set():
            connections = self.publisher.connections
            if connections > seen_connections:
                if seen_connections > 0:
                    self._replay()
                seen_connections = connections
            self._save_old_acks()
            if not self.publisher.connected:
                self.state = "down"
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            batch = self.spool.read(self._acked, self.batch_size)
            if not batch:
                self.state = "up"
                self._wake.wait(_IDLE_WAIT_S)
                self._wake.clear()
                continue
            try:
                acknowledged = self.publisher.publish(batch, self.ack_timeout_s)
            except PublishError as error:
                self._failed(str(error))
                self._stop.wait(backoff_s)
                backoff_s = min(_MAX_BACKOFF_S, backoff_s * 2)
                continue
            except Exception as error:  # a client library bug must not end delivery for good
                logger.exception("publisher %s failed", self.name)
                self._failed(f"{type(error).__name__}: {error}")
                self._stop.wait(backoff_s)
                backoff_s = min(_MAX_BACKOFF_S, backoff_s * 2)
                continue
            if acknowledged:
                self._acked = batch[acknowledged - 1].seq
                self._acks.append((time.monotonic(), self._acked))
                self.published += acknowledged
                backoff_s = 0.05
                if self._error_logged:
                    logger.info("publisher %s: delivering again", self.name)
                    self._error_logged = False
            self.state = "up"
            if acknowledged < len(batch):
                self._failed(f"{len(batch) - acknowledged} of {len(batch)} events not acknowledged")
                self._stop.wait(backoff_s)

    def _failed(self, reason: str) -> None:
        self.errors += 1
        self.state = "retrying"
        if not self._error_logged:  # once per outage, not once per retry
            self._error_logged = True
            logger.warning("publisher %s: %s; the events stay spooled and are retried", self.name, reason)

    def _save_old_acks(self) -> None:
        horizon = time.monotonic() - self.replay_s
        saved = None
        while self._acks and self._acks[0][0] <= horizon:
            saved = self._acks.popleft()[1]
        if saved is not None:
            self.spool.commit_cursor(self.name, saved)

    def _replay(self) -> None:
        """A reconnect: send again what was acknowledged in the last ``replay_s``."""
        self._acks.clear()
        saved = self.spool.cursor(self.name)
        if saved < self._acked:
            self.replayed += self._acked - saved
            logger.info(
                "publisher %s reconnected: sending the last %d acknowledged events again",
                self.name,
                self._acked - saved,
            )
            self._acked = saved
