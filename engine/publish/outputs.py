"""The outputs of one run or one service stream, with its events published: what ``vistream
run`` and a ``serve`` stream worker both call.

    outputs = open_published_outputs(out_dir, pipeline, write_video=False, source_ids=["cam1"],
                                     publish=["nats://127.0.0.1:4222"])
    try:
        pipeline.run(feeds, outputs.sinks)
    finally:
        stats = outputs.close_delivery(drain_timeout_s=30)   # None without publish URLs

``outputs.delivery`` (None without URLs) feeds ``engine.metrics.publish.DeliveryCollector``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.metrics.publish import DeliveryStats
from engine.pipeline import Pipeline
from engine.publish.delivery import EventDelivery
from engine.sinks.outputs import Outputs, open_outputs


@dataclass
class PublishedOutputs(Outputs):
    """:class:`~engine.sinks.outputs.Outputs` plus the delivery their object events go to."""

    delivery: EventDelivery | None = None

    def close_delivery(self, drain_timeout_s: float = 30.0) -> DeliveryStats | None:
        """Give the brokers up to ``drain_timeout_s`` to take what is spooled, then stop the
        publishers (call it after the pipeline closed its sinks); None without publishing."""
        return None if self.delivery is None else self.delivery.close(drain_timeout_s=drain_timeout_s)


def open_published_outputs(
    out_dir: Path,
    pipeline: Pipeline,
    *,
    write_video: bool,
    source_ids: Sequence[str] = (),
    publish: Sequence[str] = (),
    spool_path: Path | None = None,
) -> PublishedOutputs:
    """The standard sinks of ``out_dir`` (:func:`~engine.sinks.outputs.open_outputs`), the object
    events of which also go to every ``publish`` URL through a spool: ``spool_path``, or
    ``out_dir/spool.sqlite`` by default. A service stream keeps one spool across its runs, so
    what one run could not deliver goes out with the next.

    Raises:
        ConfigError: A publish URL is invalid.
        SinkError: The directory or the spool cannot be written.
    """
    delivery = EventDelivery.open(out_dir, publish, spool_path=spool_path) if publish else None
    try:
        outputs = open_outputs(
            out_dir,
            pipeline,
            write_video=write_video,
            source_ids=source_ids,
            event_listeners=[delivery] if delivery is not None else [],
        )
    except BaseException:
        if delivery is not None:
            delivery.close(drain_timeout_s=0)
        raise
    return PublishedOutputs(
        sinks=outputs.sinks,
        paths=outputs.paths,
        objects=outputs.objects,
        directory=outputs.directory,
        delivery=delivery,
    )
