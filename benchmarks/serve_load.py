"""Load on `vistream serve`: how many live streams one service keeps up with, and what it costs.

Two measurements against a real service (``vistream serve`` on 127.0.0.1, one worker process
per stream):

1. **Streams that keep up.** ``test://`` streams at ``--fps`` (5) are added in steps
   (``--streams 2,4,8``); after each step, for ``--window-s`` seconds, every stream's status is
   sampled once a second while a client polls the API at ``--api-rps`` (what a few dashboards
   do). A stream keeps up when its median fps is within 95 % of the source's and its frame age
   p99 stays below 500 ms. Reported: streams keeping up, API latency p50/p99 while loaded,
   CPU of the workers.
2. **The cost of watching.** One stream of a file read as fast as the pipeline goes
   (``frame_policy: all``, looping) with the same pipeline; rounds alternate without and with a
   live-view client (MJPEG, capped at the service's ``--live-fps``); fps and the worker's CPU
   time per frame are compared (medians over the rounds).

Writes ``serve_load.json`` under ``--out`` and prints Markdown tables::

    python benchmarks/serve_load.py --streams 2,4,8 --pipeline default --out out/bench
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import REPO_ROOT, default_shared, machine_line, markdown_table, median

from engine.metrics.resources import machine_description

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="2,4,8", help="stream counts to try, in order (cumulative)")
    parser.add_argument("--fps", type=float, default=5.0, help="frame rate of each test:// stream")
    parser.add_argument("--size", default="320x240", help="picture size of the test streams")
    parser.add_argument("--pipeline", default="default", help="pipeline of every stream")
    parser.add_argument("--window-s", type=float, default=20.0, help="measuring window per step")
    parser.add_argument("--api-rps", type=float, default=20.0, help="API requests a second while loaded")
    parser.add_argument("--jpeg-rounds", type=int, default=3, help="rounds without/with a watcher (0: skip)")
    parser.add_argument("--jpeg-round-s", type=float, default=10.0, help="seconds per half-round")
    parser.add_argument("--live-fps", type=float, default=10.0, help="the service's live-view cap")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--shared", type=Path, default=default_shared())
    args = parser.parse_args()
    counts = [int(part) for part in args.streams.split(",")]
    width, height = (int(part) for part in args.size.split("x"))
    result: dict[str, Any] = {
        "machine": machine_description(),
        "settings": vars(args) | {"out": str(args.out)},
    }
    result["settings"]["shared"] = str(args.shared)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder, _Service(Path(folder), args) as service:
        result["startup_s"] = service.startup_s
        result["load"] = _load_steps(service, counts, args, width, height)
        if args.jpeg_rounds:
            result["jpeg_cost"] = _jpeg_cost(service, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    _report(result, args)
    return 0


class _Service:
    """`vistream serve` in a child process on a free port."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.folder = folder
        self.args = args
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=30)
        self.startup_s = 0.0

    def __enter__(self) -> _Service:
        env = {**os.environ, "VISTREAM_SHARED": str(self.args.shared)}
        command = [sys.executable, "-m", "engine.cli", "serve", "--data", str(self.folder / "data")]
        command += ["--port", str(self.port), "--live-fps", str(self.args.live_fps), "--quiet"]
        started = time.monotonic()
        self.log = (self.folder / "serve.log").open("wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        while True:
            try:
                if self.http.get("/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.process.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(
                    f"service did not start: {(self.folder / 'serve.log').read_text()[-2000:]}"
                )
        self.startup_s = round(time.monotonic() - started, 2)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        self.http.close()

    def views(self) -> list[dict[str, Any]]:
        return list(self.http.get("/api/streams").json())

    def wait_running(self, names: list[str], timeout_s: float = 180.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            views = {view["name"]: view for view in self.views()}
            if all(views[name]["state"] == "running" and views[name]["fps"] > 0 for name in names):
                return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError(f"streams not running within {timeout_s} s: {self.views()}")


def _cpu_s(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _load_steps(
    service: _Service, counts: list[int], args: argparse.Namespace, width: int, height: int
) -> list:
    steps = []
    names: list[str] = []
    uri = f"test://?width={width}&height={height}&fps={args.fps:g}&pattern=ball"
    for count in counts:
        while len(names) < count:
            name = f"load{len(names) + 1}"
            response = service.http.post(
                "/api/streams", json={"name": name, "uri": uri, "pipeline": args.pipeline}
            )
            response.raise_for_status()
            names.append(name)
        ready_s = service.wait_running(names)
        time.sleep(3.0)  # let the new workers settle
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        latencies_ms: list[float] = []
        stop = threading.Event()

        def poll_api(stop: threading.Event = stop, latencies_ms: list[float] = latencies_ms) -> None:
            with httpx.Client(base_url=service.base, timeout=30) as http:
                position = 0
                while not stop.is_set():
                    path = (
                        "/api/streams"
                        if position % 2
                        else f"/api/streams/{names[position // 2 % len(names)]}"
                    )
                    begin = time.perf_counter()
                    http.get(path).raise_for_status()
                    latencies_ms.append((time.perf_counter() - begin) * 1e3)
                    position += 1
                    stop.wait(max(0.0, 1.0 / args.api_rps - (time.perf_counter() - begin)))

        poller = threading.Thread(target=poll_api)
        pids = {view["name"]: view["pid"] for view in service.views()}
        cpu_before, t_before = sum(_cpu_s(pid) for pid in pids.values()), time.monotonic()
        poller.start()
        end = time.monotonic() + args.window_s
        while time.monotonic() < end:
            for view in service.views():
                samples[view["name"]].append(view)
            time.sleep(1.0)
        stop.set()
        poller.join()
        cpu_s = sum(_cpu_s(pid) for pid in pids.values()) - cpu_before
        per_stream = {}
        for name, views in samples.items():
            fps = median(view["fps"] for view in views)
            p99 = median(view["frame_age_p99_ms"] for view in views)
            restarted = len({view["pid"] for view in views}) > 1
            keeps_up = bool(
                fps and fps >= 0.95 * args.fps and p99 is not None and p99 < 500 and not restarted
            )
            per_stream[name] = {"fps": fps, "frame_age_p99_ms": p99, "keeps_up": keeps_up}
        latencies = sorted(latencies_ms)
        steps.append(
            {
                "streams": count,
                "ready_s": round(ready_s, 1),
                "keeping_up": sum(stream["keeps_up"] for stream in per_stream.values()),
                "median_fps": round(median(stream["fps"] for stream in per_stream.values()) or 0.0, 2),
                "worst_frame_age_p99_ms": max((s["frame_age_p99_ms"] or 0) for s in per_stream.values()),
                "api_requests": len(latencies),
                "api_p50_ms": round(statistics.median(latencies), 2),
                "api_p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
                "workers_cpu_cores": round(cpu_s / (time.monotonic() - t_before), 2),
                "load_average": round(os.getloadavg()[0], 1),
                "per_stream": per_stream,
            }
        )
        print(
            f"{count} streams: {steps[-1]['keeping_up']} keep up, API p99 {steps[-1]['api_p99_ms']} ms",
            flush=True,
        )
    for name in names:
        service.http.delete(f"/api/streams/{name}")
    return steps


def _jpeg_cost(service: _Service, args: argparse.Namespace) -> dict[str, Any]:
    video = args.shared / "media" / "traffic" / "highway_overpass_320x240_60fps.avi"
    body = {
        "name": "jpeg",
        "uri": str(video),
        "pipeline": args.pipeline,
        "source": {"reconnect": True, "frame_policy": "all"},
    }
    service.http.post("/api/streams", json=body).raise_for_status()
    service.wait_running(["jpeg"])
    time.sleep(3.0)
    rounds: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for _ in range(args.jpeg_rounds):
        for mode in ("without", "with"):
            received = [0]
            stop = threading.Event()

            def watch(stop: threading.Event = stop, received: list[int] = received) -> None:
                with httpx.Client(base_url=service.base, timeout=30) as http:
                    with http.stream("GET", "/api/streams/jpeg/live.mjpg") as response:
                        for chunk in response.iter_bytes():
                            received[0] += chunk.count(b"\xff\xd9")
                            if stop.is_set():
                                return

            watcher = threading.Thread(target=watch, daemon=True)
            if mode == "with":
                watcher.start()
                time.sleep(1.0)
            view = service.http.get("/api/streams/jpeg").json()
            frames0, cpu0, t0 = view["frames"], _cpu_s(view["pid"]), time.monotonic()
            time.sleep(args.jpeg_round_s)
            view = service.http.get("/api/streams/jpeg").json()
            elapsed = time.monotonic() - t0
            frames = view["frames"] - frames0
            cpu = _cpu_s(view["pid"]) - cpu0
            stop.set()
            rounds[mode].append(
                {
                    "fps": round(frames / elapsed, 2),
                    "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 2),
                    "live_fps": round(received[0] / elapsed, 2) if mode == "with" else 0.0,
                }
            )
            if mode == "with":
                time.sleep(4.0)  # the watch lease lapses
    service.http.delete("/api/streams/jpeg")
    summary = {
        mode: {key: median(r[key] for r in values) for key in ("fps", "cpu_ms_per_frame", "live_fps")}
        for mode, values in rounds.items()
    }
    return {"rounds": rounds, "median": summary}


def _report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nvistream serve under load: {args.pipeline} pipeline, "
        f"test:// {args.size} at {args.fps:g} fps per stream"
    )
    print(machine_line(result["machine"]))
    print(f"service up in {result['startup_s']} s\n")
    rows = [
        [
            step["streams"],
            step["keeping_up"],
            step["median_fps"],
            step["worst_frame_age_p99_ms"],
            step["api_p50_ms"],
            step["api_p99_ms"],
            step["workers_cpu_cores"],
            step["load_average"],
        ]
        for step in result["load"]
    ]
    headers = [
        "streams",
        "keep up",
        "median fps",
        "worst age p99 ms",
        "API p50 ms",
        "API p99 ms",
        "CPU cores",
        "load",
    ]
    print(markdown_table(headers, rows))
    if "jpeg_cost" in result:
        cost = result["jpeg_cost"]["median"]
        print("\nWatching (MJPEG live view) vs nobody watching, one stream of a file at full speed:\n")
        rows = [
            [mode, values["fps"], values["cpu_ms_per_frame"], values["live_fps"]]
            for mode, values in cost.items()
        ]
        print(markdown_table(["watcher", "fps", "worker CPU ms/frame", "live frames/s"], rows))


if __name__ == "__main__":
    sys.exit(main())
