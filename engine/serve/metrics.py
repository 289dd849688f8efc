"""Prometheus metrics of the service, every series labelled with its stream (``GET /metrics``)::

    vistream_stream_up{stream}                    1 while the stream's state is running
    vistream_stream_state{stream,state}           1 for the current state, 0 for the others
    vistream_stream_fps{stream}                   frames a second written (last ~2 s)
    vistream_stream_frame_age_p50_seconds{stream} capture to written, median of the last ~2 s
    vistream_stream_frame_age_p99_seconds{stream} the same, 99th percentile
    vistream_stream_frames_total{stream}          frames written by the current worker
    vistream_stream_dropped_total{stream}         stale frames the `latest` policy dropped
    vistream_stream_reconnects_total{stream}      times the source came back
    vistream_stream_worker_restarts_total{stream} worker processes started again after an exit
    vistream_streams                              streams registered

and, for streams that publish their object events, the delivery families of
:mod:`engine.metrics.publish` (spool depth and drops, each publisher's state, pending,
published) with a ``stream`` label. Labels are stream names and broker URLs with credentials
masked, never camera URIs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.metrics.publish import DeliveryCollector, DeliveryStats

#: Every state a stream can be in.
STATES = ("starting", "running", "reconnecting", "failed", "stopped")


class ServiceCollector(Collector):
    """Reads every stream's status at scrape time.

    Args:
        service: The :class:`~engine.serve.service.StreamService`.
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of the module docstring."""
        views = self.service.views()
        up = GaugeMetricFamily("vistream_stream_up", "1 while the stream is running", labels=["stream"])
        state = GaugeMetricFamily(
            "vistream_stream_state", "current state of the stream", labels=["stream", "state"]
        )
        fps = GaugeMetricFamily("vistream_stream_fps", "frames a second written", labels=["stream"])
        p50 = GaugeMetricFamily(
            "vistream_stream_frame_age_p50_seconds", "median frame age", labels=["stream"]
        )
        p99 = GaugeMetricFamily("vistream_stream_frame_age_p99_seconds", "p99 frame age", labels=["stream"])
        counters = {
            key: CounterMetricFamily(f"vistream_stream_{key}", help_text, labels=["stream"])
            for key, help_text in (
                ("frames", "frames written by the current worker"),
                ("dropped", "stale frames dropped by the latest policy"),
                ("reconnects", "times the source came back"),
                ("worker_restarts", "worker processes started again after an exit"),
            )
        }
        for view in views:
            name = view["name"]
            up.add_metric([name], 1.0 if view.get("state") == "running" else 0.0)
            for each in STATES:
                state.add_metric([name, each], 1.0 if view.get("state") == each else 0.0)
            fps.add_metric([name], float(view.get("fps") or 0.0))
            for gauge, key in ((p50, "frame_age_p50_ms"), (p99, "frame_age_p99_ms")):
                if view.get(key) is not None:
                    gauge.add_metric([name], view[key] / 1000.0)
            for key, counter in counters.items():
                counter.add_metric([name], float(view.get(key) or 0))
        yield from (up, state, fps, p50, p99, *counters.values())
        streams = GaugeMetricFamily("vistream_streams", "streams registered")
        streams.add_metric([], float(len(views)))
        yield streams


def render_metrics(service: Any) -> bytes:
    """The Prometheus text exposition of the service's streams."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    registry.register(DeliveryCollector(streams=lambda: _deliveries(service)))
    return generate_latest(registry)


def _deliveries(service: Any) -> dict[str, DeliveryStats]:
    """The delivery numbers each publishing stream's worker last reported."""
    return {
        view["name"]: DeliveryStats.from_dict(view["delivery"])
        for view in service.views()
        if isinstance(view.get("delivery"), dict)
    }
