"""Streams on a Ray cluster: do they keep up on one node and on two, and what an actor costs.

Three runs of the same ``--streams`` ``test://`` cameras (``--fps``, ``--width``x``--height``)
through the ``plain`` pipeline (annotate only), each measured for ``--window-s`` seconds:

1. **in-process**: :class:`~engine.serve.worker.StreamWorker` objects in this process (no
   service, no Ray): the baseline cost of a stream.
2. **one node**: the same streams as Ray actors (:class:`~engine.cluster.placement.RayPlacement`)
   on a head node only.
3. **two nodes**: a worker node joined; the streams spread over both.

Per run: streams that keep up (median fps within 90 % of the source's), fps median / min,
CPU seconds per stream-second (this process, or the actor processes), resident memory per
stream, and for actors the cost of the service's poll (status + events) and of a poll that
also carries a live JPEG (milliseconds, median and p95, and the JPEG's size).

Honesty note: both "nodes" are processes on ONE machine sharing its cores, inside a network
namespace with only ``lo`` (root needed, like the cluster tests). Two nodes cannot add CPU
here: this is a correctness and overhead check, not a scaling figure.

    python benchmarks/cluster_streams.py --streams 4 --window-s 20 --out out/bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import REPO_ROOT, machine_line, markdown_table, median

from engine.metrics.resources import machine_description


def _uri(args: argparse.Namespace) -> str:
    return f"test://?width={args.width}&height={args.height}&fps={args.fps}&pattern=ball"


def _configs(args: argparse.Namespace) -> list[Any]:
    from engine.serve.streams import StreamConfig

    return [StreamConfig(name=f"b{index}", uri=_uri(args), pipeline="plain") for index in range(args.streams)]


def _summary(fps_samples: dict[str, list[float]], target_fps: float) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in fps_samples.items() if values}
    return {
        "keep_up": sum(1 for value in medians.values() if value >= 0.9 * target_fps),
        "fps_median": round(statistics.median(medians.values()), 2) if medians else None,
        "fps_min": round(min(medians.values()), 2) if medians else None,
    }


def in_process(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Run the streams as StreamWorkers in this process and measure them."""
    from engine.serve.worker import StreamWorker

    process = psutil.Process()
    rss_before = process.memory_info().rss
    workers = [StreamWorker(config, data_dir=data_dir) for config in _configs(args)]
    for worker in workers:
        worker.start()
    deadline_s = time.monotonic() + 120
    while time.monotonic() < deadline_s and not all(w.status()["state"] == "running" for w in workers):
        time.sleep(0.5)
    cpu_before, begin_s = sum(process.cpu_times()[:2]), time.monotonic()
    samples: dict[str, list[float]] = {w.config.name: [] for w in workers}
    while time.monotonic() - begin_s < args.window_s:
        time.sleep(1.0)
        for worker in workers:
            samples[worker.config.name].append(worker.status()["fps"])
    cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    elapsed_s = time.monotonic() - begin_s
    rss_mb = (process.memory_info().rss - rss_before) / 1e6
    for worker in workers:
        worker.stop()
    return {
        **_summary(samples, args.fps),
        "cpu_s_per_stream_s": round(cpu_s / elapsed_s / args.streams, 3),
        "rss_mb_per_stream": round(rss_mb / args.streams, 1),
    }


def on_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the namespace: this process is the driver; measure the streams as actors."""
    import ray

    from engine.cluster.placement import RayPlacement

    placement = RayPlacement(args.address, data_dir=Path(args.data), cpus_per_stream=1.0)
    placement.connect()
    supervisors = [placement.supervisor(config) for config in _configs(args)]
    for supervisor in supervisors:
        supervisor.start()
    deadline_s = time.monotonic() + 300
    started_s = time.monotonic()
    while time.monotonic() < deadline_s and not all(s.status()["state"] == "running" for s in supervisors):
        time.sleep(0.5)
    running_s = time.monotonic() - started_s
    pids = [s.status()["pid"] for s in supervisors]
    actors = [psutil.Process(pid) for pid in pids if pid]
    cpu_before, begin_s = sum(sum(a.cpu_times()[:2]) for a in actors), time.monotonic()
    samples: dict[str, list[float]] = {s.config.name: [] for s in supervisors}
    while time.monotonic() - begin_s < args.window_s:
        time.sleep(1.0)
        for supervisor in supervisors:
            samples[supervisor.config.name].append(supervisor.status()["fps"])
    cpu_s = sum(sum(a.cpu_times()[:2]) for a in actors) - cpu_before
    elapsed_s = time.monotonic() - begin_s
    rss_mb = [a.memory_info().rss / 1e6 for a in actors]
    actor = supervisors[0]._actor
    poll_ms, frame_ms, jpeg_bytes = [], [], []
    for _ in range(40):
        begin = time.perf_counter()
        ray.get(actor.poll.remote(10**9, incarnation=supervisors[0]._incarnation))
        poll_ms.append((time.perf_counter() - begin) * 1e3)
        begin = time.perf_counter()
        reply = ray.get(actor.poll.remote(10**9, incarnation=supervisors[0]._incarnation, frame_after_seq=-1))
        frame_ms.append((time.perf_counter() - begin) * 1e3)
        if reply["frame"] is not None:
            jpeg_bytes.append(len(reply["frame"][1]))
        time.sleep(0.05)
    nodes = sorted({s.status()["node"] for s in supervisors})
    for supervisor in supervisors:
        supervisor.stop()
    placement.close()
    return {
        **_summary(samples, args.fps),
        "nodes_used": len(nodes),
        "all_running_s": round(running_s, 1),
        "cpu_s_per_stream_s": round(cpu_s / elapsed_s / args.streams, 3),
        "rss_mb_per_stream": round(statistics.median(rss_mb), 1) if rss_mb else None,
        "poll_ms_p50": round(statistics.median(poll_ms), 2),
        "poll_ms_p95": round(sorted(poll_ms)[int(0.95 * len(poll_ms))], 2),
        "poll_with_jpeg_ms_p50": round(statistics.median(frame_ms), 2),
        "poll_with_jpeg_ms_p95": round(sorted(frame_ms)[int(0.95 * len(frame_ms))], 2),
        "jpeg_bytes": int(median(jpeg_bytes) or 0),
    }


def _inner(args: argparse.Namespace, netns: Any, data_dir: Path) -> dict[str, Any]:
    from tests.cluster.helpers_ray import HEAD_PORT, ray_env

    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--inside", "--result", str(result_path)]
        command += ["--address", f"127.0.0.1:{HEAD_PORT}", "--data", str(data_dir)]
        command += ["--streams", str(args.streams), "--fps", str(args.fps), "--window-s", str(args.window_s)]
        command += ["--width", str(args.width), "--height", str(args.height)]
        completed = subprocess.run(
            netns.exec_args(*command), env=ray_env(), capture_output=True, text=True, timeout=900, check=False
        )
        if completed.returncode != 0 or not result_path.is_file():
            raise RuntimeError(f"cluster run failed ({completed.returncode}): {completed.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(result_path.read_text())
        return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        args.result.write_text(json.dumps(on_cluster(args)))
        return 0

    from tests.cluster.helpers_ray import HEAD_PORT, Netns, RayNode, netns_unavailable, wait_for_port
    from tests.serve.helpers_serve import write_pipelines

    reason = netns_unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    machine = machine_description()
    root = Path(tempfile.mkdtemp(prefix="vsbench-"))
    data_dir = root / "data"
    write_pipelines(data_dir)
    results: dict[str, Any] = {"in_process": in_process(args, data_dir)}
    temp_dir = Path(f"/tmp/vsrb-{root.name[-6:]}")
    with Netns("vsbench") as netns:
        nodes: list[RayNode] = []
        try:
            started_s = time.monotonic()
            nodes.append(
                RayNode(
                    netns,
                    temp_dir=temp_dir,
                    log_path=root / "head.log",
                    head=True,
                    cpus=16,
                    worker_ports=(21000, 21499),
                )
            )
            wait_for_port(netns, HEAD_PORT)
            nodes[0].raylet_pid()
            results["head_start_s"] = round(time.monotonic() - started_s, 1)
            results["one_node"] = _inner(args, netns, data_dir)
            started_s = time.monotonic()
            nodes.append(
                RayNode(
                    netns,
                    temp_dir=temp_dir,
                    log_path=root / "worker.log",
                    head=False,
                    cpus=16,
                    worker_ports=(22000, 22499),
                )
            )
            nodes[1].raylet_pid()
            time.sleep(5.0)  # the node registers with the GCS a moment after its raylet starts
            results["worker_start_s"] = round(time.monotonic() - started_s, 1)
            results["two_nodes"] = _inner(args, netns, data_dir)
        finally:
            for node in reversed(nodes):
                node.stop()
            shutil.rmtree(temp_dir, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    report = {
        "machine": machine,
        "settings": {
            k: v for k, v in vars(args).items() if k in ("streams", "fps", "width", "height", "window_s")
        },
        **results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster_streams.json").write_text(json.dumps(report, indent=2))
    print(machine_line(machine))
    print(
        f"{args.streams} test:// streams at {args.fps} fps, {args.width}x{args.height}, "
        f"plain pipeline, {args.window_s} s window"
    )
    keys = (
        "keep_up",
        "fps_median",
        "fps_min",
        "cpu_s_per_stream_s",
        "rss_mb_per_stream",
        "nodes_used",
        "all_running_s",
        "poll_ms_p50",
        "poll_ms_p95",
        "poll_with_jpeg_ms_p50",
        "poll_with_jpeg_ms_p95",
        "jpeg_bytes",
    )
    rows = [
        [key, *(results[run].get(key) for run in ("in_process", "one_node", "two_nodes"))] for key in keys
    ]
    print(markdown_table(["", "in-process", "1 node (actors)", "2 nodes (actors)"], rows))
    print(f"head start {results['head_start_s']} s, worker node join {results['worker_start_s']} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
