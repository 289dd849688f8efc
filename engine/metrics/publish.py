"""Prometheus metrics of event delivery: spool depth, drops, and each publisher's state.

::

    vistream_spool_events                          events in the spool (delivered ones kept
                                                   for replay included)
    vistream_spool_bytes                           their payload bytes
    vistream_spool_dropped_events_total{reason}    events dropped by the spool's bounds
                                                   (size, age): lost for every broker
    vistream_events_spooled_total                  events appended by this run
    vistream_publisher_up{publisher}               1 while connected
    vistream_publisher_state{publisher,state}      1 for the current state (connecting,
                                                   up, down, retrying, closed)
    vistream_publisher_pending_events{publisher}   spooled, not yet acknowledged by it
    vistream_publisher_published_total{publisher}  events the broker acknowledged
    vistream_publisher_replayed_total{publisher}   events sent again after a reconnect
    vistream_publisher_errors_total{publisher}     failed or partly failed publishes

``publisher`` is the broker URL with credentials masked; a service adds ``stream``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Every state a publisher reports.
PUBLISHER_STATES = ("connecting", "up", "down", "retrying", "closed")


@dataclass(frozen=True)
class PublisherStats:
    """One publisher's state and counters (see the module docstring for their meaning)."""

    name: str
    state: str
    connected: bool
    published: int
    replayed: int
    errors: int
    pending: int


@dataclass(frozen=True)
class DeliveryStats:
    """The spool's and every publisher's numbers at one moment."""

    spool_events: int
    spool_bytes: int
    spooled: int
    dropped: dict[str, int] = field(default_factory=dict)
    publishers: tuple[PublisherStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``summary.json``)."""
        return {
            "spool_events": self.spool_events,
            "spool_bytes": self.spool_bytes,
            "spooled": self.spooled,
            "dropped": dict(self.dropped),
            "publishers": {
                p.name: {
                    "state": p.state,
                    "connected": p.connected,
                    "published": p.published,
                    "replayed": p.replayed,
                    "errors": p.errors,
                    "pending": p.pending,
                }
                for p in self.publishers
            },
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> DeliveryStats:
        """Rebuild the numbers from :meth:`to_dict` (a service reads them from its workers)."""
        return cls(
            spool_events=int(document.get("spool_events", 0)),
            spool_bytes=int(document.get("spool_bytes", 0)),
            spooled=int(document.get("spooled", 0)),
            dropped={str(k): int(v) for k, v in dict(document.get("dropped", {})).items()},
            publishers=tuple(
                PublisherStats(
                    name=str(name),
                    state=str(values.get("state", "closed")),
                    connected=bool(values.get("connected", False)),
                    published=int(values.get("published", 0)),
                    replayed=int(values.get("replayed", 0)),
                    errors=int(values.get("errors", 0)),
                    pending=int(values.get("pending", 0)),
                )
                for name, values in dict(document.get("publishers", {})).items()
            ),
        )

    def stats(self) -> DeliveryStats:
        """Itself (a snapshot is a :class:`DeliveryStatsSource` too)."""
        return self


class DeliveryStatsSource(Protocol):
    """Anything that reports delivery numbers (``engine.publish.EventDelivery``)."""

    def stats(self) -> DeliveryStats:
        """The numbers now."""


class DeliveryCollector(Collector):
    """Turns delivery numbers into Prometheus families at scrape time.

    Give either one delivery (``vistream run``), or ``streams``: a callable returning the
    deliveries of a service's streams by stream id, read at each scrape; every family then
    has a ``stream`` label (one collector for all streams: two collectors would repeat the
    families).

    Args:
        delivery: The one delivery of a run.
        streams: Stream id -> delivery, for a service.
    """

    def __init__(
        self,
        delivery: DeliveryStatsSource | None = None,
        *,
        streams: Callable[[], Mapping[str, DeliveryStatsSource]] | None = None,
    ) -> None:
        if (delivery is None) == (streams is None):
            raise ValueError("DeliveryCollector: give either delivery or streams")
        self.delivery = delivery
        self.streams = streams

    def collect(self) -> Iterator[Any]:
        """Yield every metric family (called by the registry on each scrape)."""
        if self.streams is not None:
            keys = ["stream"]
            items = [([name], d.stats()) for name, d in sorted(self.streams().items())]
        elif self.delivery is not None:
            keys, items = [], [([], self.delivery.stats())]
        else:
            return
        spool_events = GaugeMetricFamily("vistream_spool_events", "Events in the spool.", labels=keys)
        spool_bytes = GaugeMetricFamily("vistream_spool_bytes", "Payload bytes in the spool.", labels=keys)
        spooled = CounterMetricFamily(
            "vistream_events_spooled", "Events appended to the spool by this run.", labels=keys
        )
        dropped = CounterMetricFamily(
            "vistream_spool_dropped_events", "Events dropped by the spool's bounds.", labels=[*keys, "reason"]
        )
        publisher_keys = [*keys, "publisher"]
        up = GaugeMetricFamily("vistream_publisher_up", "1 while connected.", labels=publisher_keys)
        state = GaugeMetricFamily(
            "vistream_publisher_state",
            "1 for the publisher's current state.",
            labels=[*publisher_keys, "state"],
        )
        pending = GaugeMetricFamily(
            "vistream_publisher_pending_events", "Spooled, not yet acknowledged.", labels=publisher_keys
        )
        counters = {
            "published": CounterMetricFamily(
                "vistream_publisher_published", "Events the broker acknowledged.", labels=publisher_keys
            ),
            "replayed": CounterMetricFamily(
                "vistream_publisher_replayed", "Events sent again after a reconnect.", labels=publisher_keys
            ),
            "errors": CounterMetricFamily(
                "vistream_publisher_errors", "Failed or partly failed publishes.", labels=publisher_keys
            ),
        }
        for values, stats in items:
            spool_events.add_metric(values, stats.spool_events)
            spool_bytes.add_metric(values, stats.spool_bytes)
            spooled.add_metric(values, stats.spooled)
            for reason, count in sorted(stats.dropped.items()):
                dropped.add_metric([*values, reason], count)
            for publisher in stats.publishers:
                labels = [*values, publisher.name]
                up.add_metric(labels, 1.0 if publisher.connected else 0.0)
                for name in PUBLISHER_STATES:
                    state.add_metric([*labels, name], 1.0 if publisher.state == name else 0.0)
                pending.add_metric(labels, publisher.pending)
                for key, family in counters.items():
                    family.add_metric(labels, getattr(publisher, key))
        yield from (spool_events, spool_bytes, spooled, dropped, up, state, pending)
        yield from counters.values()
