"""Where streams run on a Ray cluster: the connection, the nodes, and one actor per stream.

:class:`RayPlacement` is what ``vistream serve --cluster ADDRESS`` gives the service instead
of local worker processes. Ray does the placing: each stream's actor declares its resources
(``cpus_per_stream`` logical CPUs, ``gpus_per_stream`` GPUs) and is scheduled with Ray's
``SPREAD`` strategy, so streams spread over the nodes and a node that joins takes the next
new streams. A stream moved by the API gets a *soft* node affinity: it prefers that node and
still fails over elsewhere when the node is lost.

Every node needs the same software (the vistream package, same version) and sees the
service's data directory at the same path (``cluster_data_dir``: shared storage such as NFS
or a ReadWriteMany volume): pipelines, calibrations and outputs live there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.checks import check_number
from engine.errors import ConfigError
from engine.serve.streams import StreamConfig

logger = logging.getLogger(__name__)

#: The Ray namespace of the service's actors.
NAMESPACE = "vistream"


class RayPlacement:
    """Connects to a Ray cluster and makes each stream's worker an actor there.

    Args:
        address: ``auto`` (a cluster started on this machine), ``HOST:PORT`` (the head's GCS
            port: the service is a driver on a node or a machine that reaches every node) or
            ``ray://HOST:10001`` (Ray Client, from outside the cluster).
        data_dir: The service's data directory as every node sees it.
        cpus_per_stream: Logical CPUs each stream's actor reserves.
        gpus_per_stream: GPUs each stream's actor reserves (0: none; fractions share one).
        jpeg_quality: JPEG quality of snapshots and live frames.
        log_level: Logging level inside the actors.

    Raises:
        ConfigError: Invalid resources, or the cluster cannot be reached.
    """

    def __init__(
        self,
        address: str,
        *,
        data_dir: Path,
        cpus_per_stream: float = 1.0,
        gpus_per_stream: float = 0.0,
        jpeg_quality: int = 80,
        log_level: int = logging.INFO,
    ) -> None:
        self.address = address
        self.data_dir = Path(data_dir)
        self.cpus_per_stream = check_number("cpus_per_stream", cpus_per_stream, low=0)
        self.gpus_per_stream = check_number("gpus_per_stream", gpus_per_stream, low=0)
        self.jpeg_quality = jpeg_quality
        self.log_level = log_level
        self._actor_class: Any = None

    def connect(self) -> None:
        """Join the cluster as a driver (idempotent).

        Raises:
            ConfigError: The cluster cannot be reached.
        """
        try:
            import ray
        except ImportError as error:
            raise ConfigError(
                f"--cluster needs the 'cluster' extra (pip install 'vistream[cluster]'): {error}"
            ) from error

        from engine.cluster.actor import StreamActor

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, namespace=NAMESPACE, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise ConfigError(f"cannot join the Ray cluster at {self.address!r}: {error}") from error
        self._actor_class = ray.remote(StreamActor)
        logger.info("joined the Ray cluster at %s: %d node(s) alive", self.address, len(self.alive_nodes()))

    def close(self) -> None:
        """Leave the cluster (the service's actors end with it: they belong to this driver)."""
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def supervisor(self, config: StreamConfig, *, live_fps: float = 10.0, **_local: Any) -> Any:
        """A :class:`~engine.cluster.supervisor.RayStreamSupervisor` for ``config`` (not started).

        Takes (and ignores) the local supervisor's process options, so the service can call
        either the same way.
        """
        from engine.cluster.supervisor import RayStreamSupervisor

        def make_actor(node: str | None) -> Any:
            return self._create_actor(config, node)

        return RayStreamSupervisor(config, make_actor=make_actor, live_fps=live_fps)

    def _create_actor(self, config: StreamConfig, node: str | None) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actor_class is None:
            self.connect()
        strategy: Any = "SPREAD" if node is None else NodeAffinitySchedulingStrategy(node, soft=True)
        return self._actor_class.options(
            max_restarts=-1,  # a lost node or process: Ray starts it again where it fits
            max_task_retries=0,  # polls are cheap to repeat; a stuck one must not pile up
            max_concurrency=4,  # a snapshot does not wait behind a poll
            num_cpus=self.cpus_per_stream,
            num_gpus=self.gpus_per_stream,
            scheduling_strategy=strategy,
        ).remote(
            config.to_dict(), str(self.data_dir), jpeg_quality=self.jpeg_quality, log_level=self.log_level
        )

    # -- nodes ------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Every node Ray knows, alive or dead: id, address, alive, head, CPUs and GPUs."""
        import ray

        result = []
        for node in ray.nodes():
            resources = node.get("Resources", {})
            result.append(
                {
                    "node": node["NodeID"],
                    "node_ip": node.get("NodeManagerAddress"),
                    "alive": bool(node.get("Alive")),
                    "head": "node:__internal_head__" in resources,
                    "cpus": resources.get("CPU", 0.0),
                    "gpus": resources.get("GPU", 0.0),
                }
            )
        return result

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The nodes that are alive."""
        return [node for node in self.nodes() if node["alive"]]

    def resolve_node(self, node: str) -> str:
        """The full id of an alive node given its id, a unique id prefix or its address.

        Raises:
            ConfigError: No alive node, or several, match.
        """
        matches = [
            each["node"]
            for each in self.alive_nodes()
            if each["node"] == node
            or each["node_ip"] == node
            or (len(node) >= 4 and each["node"].startswith(node))
        ]
        if len(matches) != 1:
            known = ", ".join(f"{each['node'][:8]} ({each['node_ip']})" for each in self.alive_nodes())
            what = "no alive node" if not matches else f"{len(matches)} nodes"
            raise ConfigError(f"{what} match {node!r}; alive nodes: {known}")
        return matches[0]
