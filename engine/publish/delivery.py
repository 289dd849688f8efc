"""Event delivery for one output directory: the spool and one runner per ``--publish`` URL.

This is what ``vistream run`` (and a ``serve`` stream worker) attaches to a run::

    delivery = EventDelivery.open(out_dir, ["nats://127.0.0.1:4222"])
    outputs = open_outputs(out_dir, pipeline, write_video=..., source_ids=ids,
                           event_listeners=[delivery])
    try:
        pipeline.run(feeds, outputs.sinks)
    finally:
        delivery.close(drain_timeout_s=10)

The objects sink calls :meth:`EventDelivery.put` with each batch's lifecycle events (after
they are numbered); ``put`` commits them to the spool and wakes the publishers, nothing
more, so the frame loop never waits for a network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.metrics.publish import DeliveryStats
from engine.publish.base import open_publisher
from engine.publish.runner import PublisherRunner
from engine.publish.spool import Spool

logger = logging.getLogger(__name__)

#: The spool's file name in an output directory.
SPOOL_NAME = "spool.sqlite"


class EventDelivery:
    """A spool plus one running publisher per URL (module docstring).

    Args:
        spool: The durable spool.
        runners: One per publisher, not started yet.
    """

    def __init__(self, spool: Spool, runners: Sequence[PublisherRunner]) -> None:
        self.spool = spool
        self.runners = list(runners)
        self._final: DeliveryStats | None = None

    @classmethod
    def open(
        cls,
        out_dir: Path,
        urls: Sequence[str],
        *,
        spool_path: Path | None = None,
        max_spool_bytes: int = 256 * 1024 * 1024,
        max_spool_age_s: float = 7 * 24 * 3600.0,
        replay_s: float = 10.0,
    ) -> EventDelivery:
        """Open the spool (``out_dir/spool.sqlite`` by default) and start a publisher per URL.

        Raises:
            ConfigError: A URL is invalid or given twice.
            SinkError: The spool cannot be created.
        """
        publishers = [open_publisher(url) for url in urls]
        names = [publisher.name for publisher in publishers]
        if len(set(names)) != len(names):
            raise ConfigError(f"--publish: a broker is given twice: {', '.join(names)}")
        spool = Spool(
            spool_path or Path(out_dir) / SPOOL_NAME,
            consumers=names,
            max_bytes=max_spool_bytes,
            max_age_s=max_spool_age_s,
        )
        runners = [PublisherRunner(publisher, spool, replay_s=replay_s) for publisher in publishers]
        delivery = cls(spool, runners)
        for runner in runners:
            runner.start()
        return delivery

    def put(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Commit events to the spool and wake the publishers (never waits for a broker)."""
        if not events:
            return
        self.spool.append(events)
        for runner in self.runners:
            runner.notify()

    def stats(self) -> DeliveryStats:
        """Spool depth, drops and every publisher's state (after ``close``: at the close)."""
        if self._final is not None:
            return self._final
        return DeliveryStats(
            spool_events=self.spool.depth(after_seq=0),
            spool_bytes=self.spool.size_bytes,
            spooled=self.spool.appended,
            dropped=dict(self.spool.dropped),
            publishers=tuple(runner.stats() for runner in self.runners),
        )

    def close(self, drain_timeout_s: float = 10.0) -> DeliveryStats:
        """Wait up to ``drain_timeout_s`` for the brokers to acknowledge everything, then stop.

        What is still undelivered stays in the spool for the next run with the same spool.

        Returns:
            The numbers at the end (for ``summary.json``).
        """
        if self._final is not None:
            return self._final
        deadline = time.monotonic() + drain_timeout_s
        for runner in self.runners:
            if not runner.wait_drained(max(0.0, deadline - time.monotonic())):
                logger.warning(
                    "publisher %s: %d events not delivered within %g s; they stay in %s for the next run",
                    runner.name,
                    runner.stats().pending,
                    drain_timeout_s,
                    self.spool.path,
                )
        for runner in self.runners:
            runner.close()
        self._final = self.stats()
        self.spool.close()
        return self._final
