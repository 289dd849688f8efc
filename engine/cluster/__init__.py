"""Stream workers on a Ray cluster (``vistream serve --cluster``), moved when a node dies.

- :mod:`engine.cluster.actor`: a stream's :class:`~engine.serve.worker.StreamWorker` in a Ray
  actor (``max_restarts=-1``), polled for status, events and live frames.
- :mod:`engine.cluster.supervisor`: the service's side of one such actor (what the API reads),
  restarts, moves.
- :mod:`engine.cluster.placement`: the cluster connection, its nodes, one actor per stream
  with its resources, spread over the nodes.

The failover promise: when a node is lost, its streams run again on the surviving nodes (where
their resources fit) within :data:`FAILOVER_PROMISE_S` seconds, with Ray's default health
checks: the GCS declares a node dead after about 15 s without heartbeats (``health_check_period_ms``
3000 x ``health_check_failure_threshold`` 5), then Ray restarts the actors and their
pipelines start (measured: see README "Running on a cluster").
"""

from __future__ import annotations

#: Seconds from a node's loss until its streams run again elsewhere (the stated promise).
FAILOVER_PROMISE_S = 60.0
