"""End-to-end throughput of vistream against bare ONNX Runtime and Ultralytics, side by side.

On one video and one ONNX model, in one process, each configuration warmed up and repeated
(alternating, so slow drifts of a shared machine hit all of them alike), medians reported:

- ``ort_model_only``: ``session.run`` alone on the same frames, letterboxed beforehand, with
  ONNX Runtime's default threads (every core);
- ``ort_model_only_1_thread``: the same with one inference thread, to show how much of the
  model-only speed needs both cores (vistream decodes on the side);
- ``ort_model_only_2_at_once``: two ``session.run`` calls at once on two threads, one inference
  thread each, the way the default pipeline runs detection (``workers: 2``): the ceiling
  vistream's overhead is measured against (each thread letterboxes its frame before the call,
  about 0.2 ms against 10 ms, so a whole video need not sit in memory as model inputs);
- ``vistream_no_video``: ``vistream run --no-video`` (decode + detect + track + JSONL + MOT),
  the default pipeline as shipped (``workers: 3``: three detect calls at once, one core each
  for two of them);
- ``vistream_no_video_1_worker``: the same with ``workers: 1`` (one detect call at a time on
  every core), to show what running detection ahead buys;
- ``vistream_video``: the same plus annotate + H.264 ``annotated.mp4``;
- ``ultralytics_track``: ``YOLO(model).track(video, tracker="bytetrack.yaml")``, when installed.

Writes ``end_to_end.json`` and ``end_to_end.png`` to ``--out`` and prints a Markdown table.

    python benchmarks/end_to_end.py --shared ../shared --out out/bench [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # noqa: E402  (puts the repository root on sys.path)
from common import REPO_ROOT, decode_all, importable, load_pyplot, offline_ultralytics


def time_ort_model_only(model: Path, frames: list[Any], threads: int | None = None) -> float:
    """Seconds for ``session.run`` over every frame (preprocessing done beforehand)."""
    seconds, per_frame_ms = common.time_ort_model_only(model, frames, threads=threads)
    return seconds * len(frames) / max(len(per_frame_ms), 1)  # the warm-up frames are not timed


def time_ort_two_at_once(model: Path, frames: list[Any]) -> float:
    """Wall seconds for ``session.run`` over every frame (letterbox included), two calls at
    once, one inference thread each."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from engine.ops.cpu import letterbox, to_model_input

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    size_hw = (int(spec.shape[2]), int(spec.shape[3]))

    def run_every_other(start: int) -> None:
        for frame in frames[start::2]:
            session.run(None, {spec.name: to_model_input([letterbox(frame, size_hw)[0]])})

    for frame in frames[:10]:  # warm-up
        session.run(None, {spec.name: to_model_input([letterbox(frame, size_hw)[0]])})
    with ThreadPoolExecutor(2) as pool:
        began = time.perf_counter()
        list(pool.map(run_every_other, (0, 1)))
        return time.perf_counter() - began


def time_vistream(
    video: Path, *, write_video: bool, out_dir: Path, workers: int | None = None
) -> tuple[float, dict[str, Any]]:
    """Seconds for a full `vistream run` (default pipeline) through the same code as the CLI."""

    from engine.config import load_pipeline
    from engine.pipeline import Pipeline
    from engine.sinks.outputs import open_outputs
    from engine.sources import open_source

    spec = load_pipeline("default")
    spec = spec.override(workers=workers)
    pipeline = Pipeline.from_spec(spec, with_drawing=write_video)
    outputs = open_outputs(out_dir, pipeline, write_video=write_video)
    source = open_source(str(video), source_id="bench")
    started = time.perf_counter()
    metrics = pipeline.run(source, outputs.sinks)
    elapsed = time.perf_counter() - started
    return elapsed, metrics.summary()


def time_ultralytics(video: Path, model: Path, imgsz: int) -> tuple[float, int, int]:
    """Seconds, frames and unique track ids for Ultralytics' ByteTrack pipeline."""
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    track_ids: set[int] = set()
    frames = 0
    started = time.perf_counter()
    for result in yolo.track(
        source=str(video), tracker="bytetrack.yaml", imgsz=imgsz, stream=True, verbose=False, device="cpu"
    ):
        frames += 1
        if result.boxes is not None and result.boxes.id is not None:
            track_ids.update(int(i) for i in result.boxes.id.tolist())
    return time.perf_counter() - started, frames, len(track_ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=common.default_shared())
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-ultralytics", action="store_true")
    args = parser.parse_args()

    video = args.video or args.shared / common.DEFAULT_VIDEO
    model = args.model or args.shared / common.DEFAULT_MODEL
    os.environ.setdefault("VISTREAM_MODELS", str(model.parent))
    offline_ultralytics()  # Ultralytics must never try to download anything here
    load_pyplot()  # before any GStreamer pipeline runs (see engine.cli.bench.report.load_pyplot)
    args.out.mkdir(parents=True, exist_ok=True)

    frames = decode_all(video)
    frame_count = len(frames)
    have_ultralytics = not args.skip_ultralytics and importable("ultralytics")
    runs: dict[str, list[float]] = {
        "ort_model_only": [],
        "ort_model_only_1_thread": [],
        "ort_model_only_2_at_once": [],
        "vistream_no_video": [],
        "vistream_no_video_1_worker": [],
        "vistream_video": [],
    }
    if have_ultralytics:
        runs["ultralytics_track"] = []
    extras: dict[str, Any] = {}

    configurations: dict[str, Callable[[], float]] = {
        "ort_model_only": lambda: time_ort_model_only(model, frames),
        "ort_model_only_1_thread": lambda: time_ort_model_only(model, frames, 1),
        "ort_model_only_2_at_once": lambda: time_ort_two_at_once(model, frames),
        "vistream_no_video": lambda: _vistream(video, False, args.out, extras),
        "vistream_no_video_1_worker": lambda: _vistream(video, False, args.out, {}, workers=1),
        "vistream_video": lambda: _vistream(video, True, args.out, extras),
    }
    if have_ultralytics:
        configurations["ultralytics_track"] = lambda: _ultralytics(video, model, extras)
    for repeat in range(args.repeats + 1):  # repeat 0 is a warm-up and is discarded
        for name, run in configurations.items():
            seconds = run()
            if repeat > 0:
                runs[name].append(seconds)
            print(
                f"  {'warm-up' if repeat == 0 else f'run {repeat}'} {name}: {frame_count / seconds:.1f} fps",
                file=sys.stderr,
            )

    fps = {name: frame_count / statistics.median(seconds) for name, seconds in runs.items()}
    # Overhead against inference run the same way as the detect stage: two calls at once for
    # the shipped pipeline (workers: 3), one call on every core for workers: 1.
    model_s = statistics.median(runs["ort_model_only_2_at_once"])
    no_video_s = statistics.median(runs["vistream_no_video"])
    model_1_worker_s = statistics.median(runs["ort_model_only"])
    no_video_1_worker_s = statistics.median(runs["vistream_no_video_1_worker"])
    from engine.metrics.resources import machine_description

    report = {
        "machine": machine_description(),
        "device": "cpu",
        "batch_size": 1,
        "video": video.name,
        "model": model.name,
        "frames": frame_count,
        "repeats": args.repeats,
        "median_fps": {name: round(value, 1) for name, value in fps.items()},
        "all_fps": {name: [round(frame_count / s, 1) for s in seconds] for name, seconds in runs.items()},
        "vistream_overhead_share": round((no_video_s - model_s) / no_video_s, 3),
        "vistream_1_worker_overhead_share": round(
            (no_video_1_worker_s - model_1_worker_s) / no_video_1_worker_s, 3
        ),
        **extras,
    }
    if have_ultralytics:
        report["vistream_no_video_vs_ultralytics"] = round(
            fps["vistream_no_video"] / fps["ultralytics_track"], 2
        )
    (args.out / "end_to_end.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(fps, args.out / "end_to_end.png", f"{video.name}, {model.name}, {os.cpu_count()} CPUs")
    print(_table(report))
    return 0


def _vistream(
    video: Path, write_video: bool, out: Path, extras: dict[str, Any], workers: int | None = None
) -> float:
    seconds, summary = time_vistream(
        video,
        write_video=write_video,
        out_dir=out / ("vistream_video" if write_video else "vistream"),
        workers=workers,
    )
    extras["vistream_unique_tracks"] = summary["unique_tracks"].get("objects")
    extras["vistream_stage_latency_per_frame_ms"] = {
        name: stats.get("p50_ms") for name, stats in summary["stage_latency_per_frame_ms"].items()
    }
    return seconds


def _ultralytics(video: Path, model: Path, extras: dict[str, Any]) -> float:
    seconds, frames, tracks = time_ultralytics(video, model, imgsz=320)
    extras["ultralytics_frames"] = frames
    extras["ultralytics_unique_tracks"] = tracks
    return seconds


def _table(report: dict[str, Any]) -> str:
    model_fps = report["median_fps"]["ort_model_only"]
    lines = ["| configuration | median fps | × model-only |", "|---|---:|---:|"]
    for name, value in report["median_fps"].items():
        lines.append(f"| {name} | {value:.1f} | {value / model_fps:.2f} |")
    lines.append("")
    lines.append(
        "vistream overhead beyond inference (no video, against ort_model_only_2_at_once): "
        f"{report['vistream_overhead_share']:.1%}; with 1 worker, against ort_model_only: "
        f"{report['vistream_1_worker_overhead_share']:.1%}"
    )
    if "vistream_no_video_vs_ultralytics" in report:
        lines.append(
            f"vistream (no video) / Ultralytics track: {report['vistream_no_video_vs_ultralytics']}×"
        )
    return "\n".join(lines)


def _plot(fps: dict[str, float], path: Path, title: str) -> None:
    plt = load_pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 3.5))
    names = list(fps)
    axis.barh(names, [fps[name] for name in names], color="tab:blue")
    for position, name in enumerate(names):
        axis.text(fps[name], position, f" {fps[name]:.1f}", va="center")
    axis.set_xlabel("frames per second (median)")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
