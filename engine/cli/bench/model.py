"""``vistream bench model``: a trtexec-like benchmark of one model, bare and inside ``detect``.

For each batch size: the bare backend (``backend.run`` on an already letterboxed batch,
synchronised on CUDA) and the ``detect`` stage end to end on the same frames (letterbox +
inference + decode/NMS + ``Detections``), each timed per call after a warm-up. Reported:
latency p50/p95/p99 (ms per batch), images/s, and the stage/bare throughput ratio (the
pre/post-processing overhead). Writes ``model_bench.json`` and ``model_bench.png``.

A fixed-batch model is run chunk by chunk at larger batch sizes (marked ``chunked``), as
the ``detect`` stage runs it. Frames come from ``--source`` (video or image folder) or a
synthetic scene; they are reused round-robin to fill a batch.

Standalone: ``python -m engine.cli.bench.model MODEL --batch 1,8,32 --device cpu -o out/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli.export.model import check_frames, frames_path_argument
from engine.device import parse_device
from engine.errors import ConfigError, EngineError
from engine.frame import Batch, Frame
from engine.metrics.resources import machine_description
from engine.ops.cpu import letterbox_batch
from engine.stage import Context
from plugins.detect import YoloDetector

logger = logging.getLogger(__name__)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``.

    Raises:
        ConfigError: Not a comma-separated list of positive integers.
    """
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"--batch must be positive integers separated by commas, got {text!r}") from error
    if not values or min(values) < 1:
        raise ConfigError(f"--batch must be positive integers separated by commas, got {text!r}")
    return values


@dataclass(frozen=True)
class ModelBenchOptions:
    """What to benchmark (see ``vistream bench model --help``)."""

    model: Path
    out_dir: Path
    batches: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    imgsz: int | None = None
    iterations: int = 30
    warmup: int = 3
    source: Path | None = None
    threads: int | None = None
    half: bool = False
    stage: bool = True
    plot: bool = True
    frames_on_device: bool = False


def summarize_latencies(latencies_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Percentiles (ms per batch) and images/s of a list of per-call latencies."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(values.mean()),
        "images_per_s": float(batch * len(values) / (values.sum() / 1000.0)),
    }


def time_interleaved(
    calls: dict[str, Callable[[], Any]], *, iterations: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Per-call latencies (ms) of several calls, timed in alternation.

    Alternating (a, b, a, b...) rather than timing all a's then all b's keeps their ratio
    fair on a machine whose load drifts (shared CI runners, other processes).
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    sync()
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, call in calls.items():
            start = time.perf_counter_ns()
            call()
            sync()
            latencies[name].append((time.perf_counter_ns() - start) / 1e6)
    return latencies


def _frames(source: Path | None, count: int) -> list[np.ndarray]:
    return check_frames(source, count, role="benchmark source")


def bench_model(options: ModelBenchOptions) -> dict[str, Any]:
    """Run the benchmark, write JSON (and the plot) into ``options.out_dir``, return the JSON.

    Raises:
        ConfigError: Invalid options.
        ModelError: The model cannot be loaded or run.
    """

    if options.iterations < 1 or options.warmup < 0:
        raise ConfigError("iterations must be positive and warmup non-negative")
    # The bare timing uses the stage's own backend: one model, one thread pool, so neither
    # measurement pays for the other's idle (spinning) worker threads.
    detector = YoloDetector(
        model=options.model, threads=options.threads, half=options.half, imgsz=options.imgsz
    )
    detector.open(Context(device=parse_device(options.device)))
    backend = detector.backend
    cuda = backend.device.is_cuda
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if cuda:
        import torch

        sync = torch.cuda.synchronize
    imgsz = detector.input_hw
    spec = backend.inputs[0]
    fixed = spec.shape[0]
    frames: list[Any] = _frames(options.source, max(options.batches))
    stage_frames = frames
    if options.frames_on_device:
        # As a GPU decoder delivers them: 3×H×W uint8 tensors already on the device.
        from engine.ops.gpu import as_chw_uint8

        stage_frames = [as_chw_uint8(frame, str(backend.device)) for frame in frames]
    results = []
    try:
        for batch in options.batches:
            images = [frames[i % len(frames)] for i in range(batch)]
            chunk = fixed or batch
            rows = -(-batch // chunk) * chunk
            blob, _ = letterbox_batch(images + images[: rows - batch], imgsz)
            feed: Any = blob.astype(np.dtype(spec.dtype), copy=False)
            if cuda:
                import torch

                feed = torch.from_numpy(feed).to(str(backend.device))

            def run_bare(feed: Any = feed, rows: int = rows, chunk: int = chunk) -> None:
                for start in range(0, rows, chunk):
                    backend.run({spec.name: feed[start : start + chunk]})

            stage_images = [stage_frames[i % len(frames)] for i in range(batch)]

            def run_stage(images: list[Any] = stage_images) -> None:
                detector(Batch.of([Frame("bench", i, i, image) for i, image in enumerate(images)]))

            calls: dict[str, Callable[[], Any]] = {"model": run_bare}
            if options.stage:
                calls["stage"] = run_stage
            timed = time_interleaved(calls, iterations=options.iterations, warmup=options.warmup, sync=sync)
            entry: dict[str, Any] = {"batch": batch, "chunked": chunk < batch}
            entry.update({name: summarize_latencies(values, batch) for name, values in timed.items()})
            if options.stage:
                entry["stage_over_model"] = entry["stage"]["images_per_s"] / entry["model"]["images_per_s"]
            results.append(entry)
            logger.info("batch %d: %.1f images/s bare", batch, entry["model"]["images_per_s"])
    finally:
        device = str(backend.device)
        detector.close()
    report = {
        "benchmark": "model",
        "machine": machine_description(),
        "model": str(options.model),
        "device": device,
        "imgsz": list(imgsz),
        "fixed_batch": fixed,
        "threads": options.threads,
        "half": options.half,
        "iterations": options.iterations,
        "warmup": options.warmup,
        "frames": str(options.source) if options.source else "synthetic",
        "frames_on_device": options.frames_on_device,
        "results": results,
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    (options.out_dir / "model_bench.json").write_text(json.dumps(report, indent=2))
    if options.plot:
        plot_report(report, options.out_dir / "model_bench.png")
    return report


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput per batch size, bare model vs detect stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    batches = [entry["batch"] for entry in results]
    figure, (latency_axis, throughput_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, colour in (("model", "tab:blue"), ("stage", "tab:orange")):  # bare model, detect stage
        if kind not in results[0]:
            continue
        for percentile, style in (("p50_ms", "-o"), ("p95_ms", "--"), ("p99_ms", ":")):
            latency_axis.plot(
                batches,
                [e[kind][percentile] for e in results],
                style,
                color=colour,
                label=f"{kind} {percentile[:3]}",
            )
        throughput_axis.plot(
            batches, [e[kind]["images_per_s"] for e in results], "-o", color=colour, label=kind
        )
    latency_axis.set_yscale("log")  # batch 1 and batch 32 differ by ~30x
    for axis, label in ((latency_axis, "latency per batch (ms)"), (throughput_axis, "images/s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(batches, [str(b) for b in batches])
        axis.set_xlabel("batch size")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"{Path(report['model']).name} on {report['device']} ({report['imgsz'][1]}x{report['imgsz'][0]})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render_table(report: dict[str, Any]) -> str:
    """A console table of the report."""
    lines = [
        f"{Path(report['model']).name} on {report['device']} ({report['machine'].get('cpu', '?')}), "
        f"{report['imgsz'][1]}x{report['imgsz'][0]}",
        f"{'batch':>5} | {'model p50/p95/p99 ms':>22} {'img/s':>8} | "
        f"{'detect p50/p95/p99 ms':>22} {'img/s':>8} | ratio",
    ]
    for entry in report["results"]:
        model = entry["model"]
        row = f"{entry['batch']:>5} | {model['p50_ms']:6.1f} {model['p95_ms']:7.1f} {model['p99_ms']:7.1f} "
        row += f"{model['images_per_s']:8.1f} |"
        if "stage" in entry:
            stage = entry["stage"]
            row += f" {stage['p50_ms']:6.1f} {stage['p95_ms']:7.1f} {stage['p99_ms']:7.1f} "
            row += f"{stage['images_per_s']:8.1f} | {entry['stage_over_model']:.2f}"
        lines.append(row + (" (chunked)" if entry["chunked"] else ""))
    return "\n".join(lines)


def _batches_argument(text: str) -> tuple[int, ...]:
    try:
        return parse_batches(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="model file (.onnx, .engine, .pt, .torchscript)")
    parser.add_argument(
        "--batch", type=_batches_argument, default=(1, 8, 32), help="batch sizes, e.g. 1,8,32"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    parser.add_argument("--imgsz", type=int, default=None, help="input size of dynamic-size models")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument("--iterations", type=int, default=30, help="timed calls per batch size (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (3)")
    parser.add_argument(
        "--source", type=frames_path_argument, default=None, help="video or image folder (default synthetic)"
    )
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--half", action="store_true", help="FP16 (PyTorch models on CUDA)")
    parser.add_argument("--no-stage", action="store_true", help="time the bare model only")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument(
        "--frames-on-device",
        action="store_true",
        help="give the stage frames already on --device (GPU decode)",
    )
    parser.set_defaults(handler=_command)


def add_model_parser(bench_subparsers: Any) -> None:
    """Add ``model`` under ``vistream bench``."""
    parser = bench_subparsers.add_parser(
        "model",
        help="trtexec-like model benchmark: latency percentiles and images/s per batch size",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    _add_arguments(parser)


def _command(args: argparse.Namespace) -> int:
    options = ModelBenchOptions(
        model=args.model,
        out_dir=args.out,
        batches=args.batch,
        device=args.device,
        imgsz=args.imgsz,
        iterations=args.iterations,
        warmup=args.warmup,
        source=args.source,
        threads=args.threads,
        half=args.half,
        stage=not args.no_stage,
        plot=not args.no_plot,
        frames_on_device=args.frames_on_device,
    )
    report = bench_model(options)
    print(render_table(report))
    print(f"wrote {args.out / 'model_bench.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.cli.bench.model``: the same as ``vistream bench model``."""
    parser = argparse.ArgumentParser(prog="python -m engine.cli.bench.model", description=__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
