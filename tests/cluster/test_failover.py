"""`vistream serve --cluster` on a real local Ray cluster: ten streams over a head and a worker
node, a stream moved by the API, the worker node's raylet killed by PID while the event broker
(a real nats-server in the namespace) is down, every stream running again on the head within the
promised time, with the gap marked and no event dropped, and every object event of every run,
the dead node's unsent ones included, at the broker once; then a new node joins and takes new
streams.

One module-scoped cluster (starting Ray dominates the time: minutes on a loaded 2-core box).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cluster import FAILOVER_PROMISE_S
from tests.cluster.helpers_ray import (
    HEAD_PORT,
    Netns,
    NetnsNats,
    NetnsService,
    RayNode,
    netns_unavailable,
    wait_for_port,
)
from tests.publish.helpers_brokers import nats_server_binary
from tests.serve.helpers_serve import read_objects_files, write_pipelines, write_replayed_pipeline

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
logger = logging.getLogger(__name__)

STREAMS = [f"cam{index}" for index in range(10)]
# Small, slow test cameras: ten of them, twice, share two loaded cores with the cluster.
URI = "test://?width=160&height=120&fps=5&pattern=ball"
START_TIMEOUT_S = 300.0


class Cluster:
    """The running pieces and what the test measured."""

    def __init__(
        self, netns: Netns, nodes: list[RayNode], service: NetnsService, temp_dir: Path, nats: NetnsNats
    ) -> None:
        self.netns, self.nodes_started, self.service, self.temp_dir = netns, nodes, service, temp_dir
        self.nats = nats
        self.head, self.worker = nodes
        self.timings: dict[str, float] = {}

    def add_node(self) -> RayNode:
        """Start another worker node (stopped with the others at the end)."""
        node = RayNode(
            self.netns,
            temp_dir=self.temp_dir,
            log_path=self.service.data_dir.parent / f"node{len(self.nodes_started)}.log",
            head=False,
            cpus=12,
            worker_ports=(23000, 23499),
        )
        self.nodes_started.append(node)
        return node

    def streams(self) -> dict[str, dict[str, Any]]:
        response = self.service.request("GET", "/api/streams")
        assert response.status_code == 200, response.text
        return {view["name"]: view for view in response.json()}

    def nodes(self) -> list[dict[str, Any]]:
        response = self.service.request("GET", "/api/nodes")
        assert response.status_code == 200, response.text
        nodes: list[dict[str, Any]] = response.json()
        return nodes

    def wait(self, check: Any, timeout_s: float, what: str) -> Any:
        deadline_s = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline_s:
            last = check()
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"{what} not within {timeout_s} s; last: {last!r}\n{self.service.log()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pytest.importorskip("ray", reason="the cluster tests need the 'cluster' extra (ray)")
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("cluster")
    temp_dir = Path(f"/tmp/vsray-{root.name[-6:]}")  # Ray's socket paths must stay short
    data_dir = root / "data"
    write_pipelines(data_dir)
    write_replayed_pipeline(data_dir)  # tracked objects from a MOT file: object events to publish
    nats_binary = nats_server_binary()
    with Netns() as netns:
        nodes: list[RayNode] = []
        service: NetnsService | None = None
        nats = NetnsNats(netns, nats_binary, root)
        try:
            started_s = time.monotonic()
            nats.start()
            head = RayNode(
                netns,
                temp_dir=temp_dir,
                log_path=root / "head.log",
                head=True,
                cpus=12,
                worker_ports=(21000, 21499),
            )
            nodes.append(head)
            wait_for_port(netns, HEAD_PORT)
            worker = RayNode(
                netns,
                temp_dir=temp_dir,
                log_path=root / "worker.log",
                head=False,
                cpus=12,
                worker_ports=(22000, 22499),
            )
            nodes.append(worker)
            worker.raylet_pid()
            service = NetnsService(
                netns,
                data_dir,
                "--cluster",
                f"127.0.0.1:{HEAD_PORT}",
                "--stream-cpus",
                "1",
                "--live-fps",
                "5",
                "--publish",
                nats.url,
            )
            service.wait_healthy()
            running = Cluster(netns, nodes, service, temp_dir, nats)
            running.wait(lambda: len([n for n in running.nodes() if n["alive"]]) == 2, 240, "two nodes alive")
            running.timings["cluster_and_service_up_s"] = round(time.monotonic() - started_s, 1)
            yield running
        finally:
            if service is not None:
                service.stop()
            for node in reversed(nodes):
                node.stop()
            nats.kill()
            import shutil

            shutil.rmtree(temp_dir, ignore_errors=True)


def test_streams_spread_move_and_fail_over_to_the_head(cluster: Cluster) -> None:
    for name in STREAMS:
        response = cluster.service.request(
            "POST", "/api/streams", json={"name": name, "uri": URI, "pipeline": "replayed"}
        )
        assert response.status_code == 201, response.text
    added_s = time.monotonic()

    def all_running(count: int = len(STREAMS)) -> dict[str, dict[str, Any]] | None:
        views = cluster.streams()
        ok = all(view["state"] == "running" and view["fps"] > 0 and view["node"] for view in views.values())
        return views if ok and len(views) == count else None

    views = cluster.wait(all_running, START_TIMEOUT_S, "ten streams running")
    cluster.timings["ten_streams_running_s"] = round(time.monotonic() - added_s, 1)
    nodes = {node["node"]: node for node in cluster.nodes() if node["alive"]}
    head_id = next(node_id for node_id, node in nodes.items() if node["head"])
    worker_id = next(node_id for node_id in nodes if node_id != head_id)
    on_worker = sorted(name for name, view in views.items() if view["node"] == worker_id)
    assert 0 < len(on_worker) < len(STREAMS), f"SPREAD put every stream on one node: {views}"
    assert sorted(nodes[worker_id]["streams"]) == on_worker  # /api/nodes agrees with the streams

    # A move by the API: a stream of the head goes to the worker node (by its address prefix).
    moved = sorted(set(STREAMS) - set(on_worker))[0]
    response = cluster.service.request("POST", f"/api/streams/{moved}/move", json={"node": worker_id[:12]})
    assert response.status_code == 200, response.text
    cluster.wait(
        lambda: (
            (v := cluster.streams()[moved])["node"] == worker_id and v["state"] == "running" and v["fps"] > 0
        ),
        120,
        "moved stream running on the worker",
    )
    on_worker.append(moved)
    view = cluster.streams()[moved]
    assert view["moves"] == 1 and view["worker_restarts"] == 0
    bad = cluster.service.request("POST", f"/api/streams/{moved}/move", json={"node": "no-such-node"})
    assert bad.status_code == 400 and "no alive node" in bad.json()["detail"]
    snapshot = cluster.service.request("GET", f"/api/streams/{on_worker[0]}/snapshot.jpg")
    assert snapshot.status_code == 200 and snapshot.content[:2] == b"\xff\xd8"  # from the other node
    before = {name: _events(cluster, name) for name in STREAMS}

    # The broker dies first, so the worker node's streams hold events only their spools have.
    cluster.nats.kill()
    cluster.wait(
        lambda: all(_pending(view) > 0 for name, view in cluster.streams().items() if name in on_worker),
        60,
        "events spooled on the worker node while the broker is down",
    )
    cluster.timings["events_spooled_on_the_worker_node_at_the_kill"] = sum(
        _pending(view) for name, view in cluster.streams().items() if name in on_worker
    )
    # The worker node dies: its raylet is killed; `ray start --block` then ends the node.
    killed_s = time.monotonic()
    _kill(cluster.worker.raylet_pid())
    cluster.nats.start()  # same port and store

    def all_on_head() -> dict[str, dict[str, Any]] | None:
        views = all_running()
        return views if views and all(view["node"] == head_id for view in views.values()) else None

    views = cluster.wait(all_on_head, FAILOVER_PROMISE_S + 60, "every stream running on the head")
    failover_s = time.monotonic() - killed_s
    cluster.timings["failover_s"] = round(failover_s, 1)
    logger.warning("cluster timings: %s", cluster.timings)
    print(f"\ncluster timings (s): {cluster.timings}")
    assert failover_s <= FAILOVER_PROMISE_S, (
        f"failover took {failover_s:.1f} s, promised {FAILOVER_PROMISE_S} s"
    )
    dead = [node for node in cluster.nodes() if node["node"] == worker_id]
    assert dead and not dead[0]["alive"]

    for name in STREAMS:
        after = _events(cluster, name)
        ids = [event["id"] for event in after]
        assert ids == sorted(set(ids)), f"{name}: event ids repeat or go back"
        # Nothing the service had is gone, and the new events follow them.
        assert [event["id"] for event in after[: len(before[name])]] == [e["id"] for e in before[name]]
        types = [event["type"] for event in after[len(before[name]) :]]
        if name in on_worker:
            assert views[name]["worker_restarts"] == 1, views[name]
            assert "worker_restarted" in types and "source_reconnected" in types, (name, types)
            restarted = next(event for event in after if event["type"] == "worker_restarted")
            assert restarted["from_node"] == worker_id and restarted["to_node"] == head_id
        else:
            assert views[name]["worker_restarts"] == 0, views[name]
            assert "source_reconnected" not in types, (name, types)

    # A node joins: new streams go there too (SPREAD), the running ones stay where they are.
    joined_s = time.monotonic()
    cluster.add_node().raylet_pid()
    alive = cluster.wait(
        lambda: _alive(cluster) if len(_alive(cluster)) == 2 else None, 240, "a new node alive"
    )
    new_id = next(node["node"] for node in alive if node["node"] != head_id)
    cluster.timings["node_join_s"] = round(time.monotonic() - joined_s, 1)
    for name in ("late0", "late1"):
        response = cluster.service.request(
            "POST", "/api/streams", json={"name": name, "uri": URI, "pipeline": "plain"}
        )
        assert response.status_code == 201, response.text
    views = cluster.wait(lambda: all_running(len(STREAMS) + 2), START_TIMEOUT_S, "the late streams running")
    assert new_id in {views[name]["node"] for name in ("late0", "late1")}, views
    assert all(views[name]["node"] == head_id for name in STREAMS)
    print(f"\ncluster timings (s): {cluster.timings}")

    # Every object event of every run of every stream, the dead node's included, is at the broker
    # once, in the order it was made (per run). Stopping the service finalizes the streams.
    cluster.service.stop()
    received = cluster.nats.events()
    ids = [event["id"] for event in received]
    assert len(ids) == len(set(ids)), "the broker kept a duplicate"
    for name in STREAMS:
        written = read_objects_files(cluster.service.data_dir / "streams" / name)
        missing = {event["id"] for event in written} - set(ids)
        assert written and not missing, f"{name}: {len(missing)} of {len(written)} events not at the broker"
    runs: dict[str, list[int]] = {}
    for event_id in ids:
        token, _, number = event_id.rpartition("-")
        runs.setdefault(token, []).append(int(number))
    assert all(numbers == sorted(numbers) for numbers in runs.values())
    assert len(runs) >= len(STREAMS) + len(on_worker)  # the dead incarnations' runs are there
    cluster.timings["events_at_the_broker"] = len(ids)
    print(f"\ncluster timings and events: {cluster.timings}")


def _pending(view: dict[str, Any]) -> int:
    """Events the stream's worker spooled that no broker acknowledged yet."""
    publishers = (view.get("delivery") or {}).get("publishers", {})
    return sum(int(values.get("pending", 0)) for values in publishers.values())


def _alive(cluster: Cluster) -> list[dict[str, Any]]:
    return [node for node in cluster.nodes() if node["alive"]]


def _events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    response = cluster.service.request("GET", f"/api/streams/{name}/events")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


def _kill(pid: int) -> None:
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
