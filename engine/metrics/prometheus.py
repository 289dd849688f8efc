"""Prometheus metrics of a running pipeline, served over HTTP (``vistream run --metrics-port``).

Metrics are read from the pipeline's :class:`~engine.metrics.run.RunMetrics` at scrape time (a
custom collector on a registry of its own), so the endpoint, the status line and
``summary.json`` show the same numbers and nothing is counted twice::

    vistream_frames_in_total{source}          frames read from the source
    vistream_frames_out_total{source}         frames written by the sinks
    vistream_frames_dropped_total{source}     stale frames dropped by the `latest` policy
    vistream_frames_invalid_total{source}     frames without a picture (zero size), dropped
    vistream_reconnects_total{source}         times a live source came back
    vistream_source_up{source}                1 while the source delivers frames
    vistream_source_failed{source}            1 once the source failed for good
    vistream_queue_depth_frames{source}       frames waiting in the source's queue
    vistream_frame_age_seconds{source}        histogram: capture to written
    vistream_stage_latency_seconds{stage}     histogram: one stage call on a batch
    vistream_stage_errors_total{stage,error}  stage failures by exception type
    vistream_skipped_frames_total             frames skipped under on_error: skip

Labels are source ids and stage names only, never URIs, so no credential can reach them.
The server listens on 127.0.0.1 unless told otherwise: metrics describe the cameras.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from engine.checks import check_int
from engine.errors import ConfigError
from engine.metrics.run import BUCKETS_MS, LatencySeries

logger = logging.getLogger(__name__)


def _histogram(family: HistogramMetricFamily, labels: list[str], series: LatencySeries) -> None:
    cumulative, buckets = 0, []
    for bound_ms, count in zip((*BUCKETS_MS, float("inf")), series.bucket_counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound_ms == float("inf") else f"{bound_ms / 1000:g}", cumulative))
    family.add_metric(labels, buckets, series.sum_ms / 1000)


class PipelineCollector(Collector):
    """Turns a pipeline's current metrics into Prometheus metric families.

    Args:
        pipeline: The :class:`~engine.pipeline.Pipeline` (its ``metrics`` are replaced at the
            start of each run; the collector always reads the current ones).
    """

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Any]:
        """Yield every metric family (called by the registry on each scrape)."""
        metrics = self.pipeline.metrics.snapshot()
        counters = {
            "vistream_frames_in": ("Frames read from the source.", metrics.frames_in),
            "vistream_frames_out": ("Frames written by the sinks.", metrics.frames_out),
            "vistream_frames_dropped": (
                "Stale frames dropped by the latest frame policy.",
                metrics.frames_dropped,
            ),
            "vistream_frames_invalid": (
                "Frames without a picture (zero size), dropped.",
                metrics.frames_invalid,
            ),
            "vistream_reconnects": ("Times a live source came back.", metrics.reconnects),
        }
        for name, (documentation, values) in counters.items():
            family = CounterMetricFamily(name, documentation, labels=["source"])
            for source_id, value in sorted(values.items()):
                family.add_metric([source_id], value)
            yield family
        up = GaugeMetricFamily("vistream_source_up", "1 while the source delivers frames.", labels=["source"])
        failed = GaugeMetricFamily(
            "vistream_source_failed", "1 once the source failed for good.", labels=["source"]
        )
        for source_id, state in sorted(metrics.source_state.items()):
            up.add_metric([source_id], 1.0 if state == "up" else 0.0)
            failed.add_metric([source_id], 1.0 if state == "failed" else 0.0)
        yield up
        yield failed
        depth = GaugeMetricFamily(
            "vistream_queue_depth_frames", "Frames waiting in the source's queue.", labels=["source"]
        )
        for source_id, value in sorted(self.pipeline.queue_depths().items()):
            depth.add_metric([source_id], value)
        yield depth
        age = HistogramMetricFamily(
            "vistream_frame_age_seconds", "Capture to written, per frame.", labels=["source"]
        )
        for source_id, series in sorted(metrics.frame_age_ms.items()):
            _histogram(age, [source_id], series)
        yield age
        latency = HistogramMetricFamily(
            "vistream_stage_latency_seconds", "One stage call on a batch.", labels=["stage"]
        )
        for stage, series in metrics.stage_latency_ms.items():
            _histogram(latency, [stage], series)
        yield latency
        errors = CounterMetricFamily(
            "vistream_stage_errors", "Stage failures by exception type.", labels=["stage", "error"]
        )
        for kind, count in sorted(metrics.errors.items()):
            stage, _, error = kind.partition(": ")
            errors.add_metric([stage, error], count)
        yield errors
        skipped = CounterMetricFamily("vistream_skipped_frames", "Frames skipped under on_error: skip.")
        skipped.add_metric([], metrics.skipped_frames)
        yield skipped


class MetricsServer:
    """Serves a pipeline's metrics at ``http://HOST:PORT/metrics`` on a background thread.

    Args:
        pipeline: The pipeline to report on.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: Address to listen on; 127.0.0.1 keeps the metrics on this machine.
        collectors: More collectors served beside the pipeline's (event delivery).

    Raises:
        ConfigError: The port is out of range or cannot be bound.
    """

    def __init__(
        self, pipeline: Any, *, port: int, host: str = "127.0.0.1", collectors: Sequence[Collector] = ()
    ) -> None:
        check_int("--metrics-port", port, low=0, high=65535)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PipelineCollector(pipeline))
        for collector in collectors:  # e.g. event delivery (engine.metrics.publish)
            self.registry.register(collector)
        try:
            server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from error
        self._server: WSGIServer | None = server
        self.host = host
        #: The port really bound (useful with port 0).
        self.port = int(server.server_port)
        logger.info("serving Prometheus metrics at http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)
