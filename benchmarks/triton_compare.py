"""Local ONNX Runtime vs Triton (gRPC, HTTP): latency and throughput side by side, in one run.

Two scenarios, each on the same letterboxed highway frames:

- ``batch1``: the shared YOLO11n (batch 1 baked in), one request at a time (what one camera
  worker sees): latency per request and requests/s.
- ``concurrent``: a dynamic-batch YOLO11n (``yolo11n.yaml`` exported here with random weights:
  speed does not depend on them) served with dynamic batching (up to 8 rows), and
  ``--concurrency`` threads each sending one-frame requests (several cameras or workers):
  latency per request, frames/s, and the mean batch the server formed (its statistics).

The server is the one the tests use (:mod:`engine.backends.triton_server`, PyTriton's Triton
2.51 with the Python backend running ONNX Runtime); it is installed into ``--venv`` on first
use. Writes ``triton_compare.json`` under ``--out`` and prints a Markdown table::

    python benchmarks/triton_compare.py --out out/triton_compare
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the repository root on sys.path)
import numpy as np
from common import (
    DEFAULT_MODEL,
    DEFAULT_VIDEO,
    REPO_ROOT,
    decode_all,
    default_shared,
    markdown_table,
    offline_ultralytics,
)

Runner = Callable[[np.ndarray], Any]


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_s) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}


def _measure(run: Runner, blobs: list[np.ndarray], *, requests: int, threads: int) -> dict[str, Any]:
    """``requests`` calls spread over ``threads`` threads; latency of each, overall throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            started = time.perf_counter()
            run(blobs[index % len(blobs)])
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    for blob in blobs[:threads]:  # warm every connection and session up
        run(blob)
    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall_s = time.perf_counter() - started
    return {
        "requests": requests,
        "threads": threads,
        "per_s": round(requests / wall_s, 1),
        **_percentiles(latencies),
    }


def _dynamic_model(directory: Path) -> Path:
    offline_ultralytics()
    from engine.cli.export.model import export_onnx, load_yolo

    return Path(
        export_onnx(
            load_yolo(Path("yolo11n.yaml")),
            directory / "yolo11n_dynamic.onnx",
            imgsz=320,
            dynamic=True,
            batch=8,
        )
    )


def main() -> int:
    """Start the server, run both scenarios on each backend, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shared", type=Path, default=default_shared())
    parser.add_argument(
        "--venv", type=Path, default=REPO_ROOT / ".venv-triton", help="the server's virtualenv"
    )
    parser.add_argument("--requests", type=int, default=120, help="requests per measurement (120)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads in the concurrent scenario (8)")
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher's wait (2000)")
    args = parser.parse_args()

    from engine.backends import load_backend
    from engine.backends.triton import TritonBackend
    from engine.backends.triton_server import LocalTritonServer, install_server_venv, write_model_repository
    from engine.metrics.resources import machine_description
    from engine.ops.cpu import letterbox_batch

    frames = decode_all(args.shared / DEFAULT_VIDEO, limit=32)
    blobs = [letterbox_batch([frame], (320, 320), pad_value=114)[0].copy() for frame in frames]
    fixed_model = args.shared / DEFAULT_MODEL
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="triton-compare-") as temporary:
        dynamic_model = _dynamic_model(Path(temporary))
        repository = Path(temporary) / "models"
        write_model_repository(repository, "yolo11n", fixed_model)
        write_model_repository(
            repository,
            "yolo11n_dynamic",
            dynamic_model,
            max_batch_size=8,
            max_queue_delay_us=args.queue_delay_us,
        )
        venv = install_server_venv(args.venv)
        with LocalTritonServer(venv, repository) as server:
            for scenario, model_file, name, threads in (
                ("batch1", fixed_model, "yolo11n", 1),
                ("concurrent", dynamic_model, "yolo11n_dynamic", args.concurrency),
            ):
                for backend_name, model in (
                    ("local ORT", str(model_file)),
                    ("Triton gRPC", f"triton://{server.grpc_url}/{name}"),
                    ("Triton HTTP", f"triton+http://{server.http_url}/{name}"),
                ):
                    backend = load_backend(model)
                    input_name, output_name = backend.inputs[0].name, backend.outputs[0].name
                    before = backend.statistics() if isinstance(backend, TritonBackend) else {}

                    def run(
                        blob: np.ndarray, backend: Any = backend, i: str = input_name, o: str = output_name
                    ) -> Any:
                        return backend.run({i: blob})[o]

                    row = {"scenario": scenario, "backend": backend_name, "model": name}
                    row.update(_measure(run, blobs, requests=args.requests, threads=threads))
                    if isinstance(backend, TritonBackend):
                        after = backend.statistics()
                        rows = int(after["inference_count"]) - int(before.get("inference_count", 0))
                        runs = int(after["execution_count"]) - int(before.get("execution_count", 0))
                        row["server_mean_batch"] = round(rows / max(runs, 1), 2)
                    backend.close()
                    results.append(row)
                    print(f"{scenario:>10} {backend_name:<12} {row}", flush=True)

    table = markdown_table(
        ["scenario", "backend", "threads", "req/s", "p50 ms", "p95 ms", "p99 ms", "server batch"],
        [
            [
                r["scenario"],
                r["backend"],
                r["threads"],
                r["per_s"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r.get("server_mean_batch", "-"),
            ]
            for r in results
        ],
        align="llrrrrrr",
    )
    machine = machine_description()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "results": results,
    }
    (args.out / "triton_compare.json").write_text(json.dumps(report, indent=1))
    print(table)
    print(f"\nmachine: {common.machine_line(machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
