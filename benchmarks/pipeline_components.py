"""Per-frame CPU cost of every stage and sink of a pipeline, one frame at a time, on cached frames.

    python benchmarks/pipeline_components.py [--pipeline traffic] [--frames 400] [--out FILE.json]

Frames are decoded first (the reader's CPU per frame is measured then), then every stage and
every standard output of ``vistream run --no-video`` runs on each frame in turn on this thread.
Each component's figure is the CPU time of this thread (``time.thread_time``), so it stays
meaningful on a loaded machine where wall-clock figures do not; work a component hands to
threads of its own (a model runtime's inference threads) is not in it: the model's share is
reported as the wall time of the ``detect`` calls beside it. The first 20 frames are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

WARMUP_FRAMES = 20


def measure(pipeline_name: str, video: Path, frames_wanted: int) -> dict[str, Any]:
    """CPU ms per frame of each component, and the detect calls' wall time."""
    from engine.config import load_pipeline
    from engine.frame import Batch
    from engine.pipeline import Pipeline
    from engine.sinks.outputs import open_outputs
    from engine.sources import open_source
    from engine.stage import Context

    spec = load_pipeline(pipeline_name)
    pipeline = Pipeline.from_spec(spec, with_drawing=False)  # stages before GStreamer (OpenVINO)
    source = open_source(str(video), source_id="cam0")
    info = source.open()
    started = time.thread_time()
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) >= frames_wanted:
            break
    decode_ms = (time.thread_time() - started) / len(frames) * 1e3
    source.close()
    context = Context(device=spec.settings.device, sources={"cam0": info}, config_dir=spec.config_dir)
    for named in pipeline.stages:
        workers = spec.settings.workers if named in pipeline.ahead_stages() else 1
        named.stage.open(dataclasses.replace(context, workers=workers))
    outputs = open_outputs(Path(tempfile.mkdtemp(prefix="components-")), pipeline, write_video=False)
    for sink in outputs.sinks:
        sink.open(context)
    cpu: dict[str, list[float]] = {named.name: [] for named in pipeline.stages}
    cpu.update({type(sink).__name__: [] for sink in outputs.sinks})
    detect_wall: list[float] = []
    try:
        for frame in frames:
            batch = Batch([dataclasses.replace(frame, layers={})])
            for named in pipeline.stages:
                wall, started = time.perf_counter(), time.thread_time()
                batch = named.stage(batch)
                cpu[named.name].append(time.thread_time() - started)
                if named.name == "detect":
                    detect_wall.append(time.perf_counter() - wall)
            for sink in outputs.sinks:
                started = time.thread_time()
                sink.write(batch)
                cpu[type(sink).__name__].append(time.thread_time() - started)
    finally:
        for sink in outputs.sinks:
            sink.close()
        if outputs.directory is not None:
            outputs.directory.release()
        for named in reversed(pipeline.stages):
            named.stage.close()
    per_frame = {name: statistics.mean(values[WARMUP_FRAMES:]) * 1e3 for name, values in cpu.items()}
    return {
        "pipeline": pipeline_name,
        "video": video.name,
        "frames": len(frames),
        "decode_cpu_ms": decode_ms,
        "cpu_ms_per_frame": per_frame,
        "total_cpu_ms_per_frame": sum(per_frame.values()) + decode_ms,
        "detect_wall_ms_p50": statistics.median(detect_wall[WARMUP_FRAMES:]) * 1e3 if detect_wall else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="traffic", help="pipeline name or YAML (traffic)")
    parser.add_argument("--shared", type=Path, default=common.default_shared())
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    video = args.video or args.shared / common.DEFAULT_VIDEO
    result = measure(args.pipeline, video, args.frames)
    rows = [["decode + I420→BGR (reader thread)", f"{result['decode_cpu_ms']:.3f}"]]
    rows += [[name, f"{value:.3f}"] for name, value in result["cpu_ms_per_frame"].items()]
    rows.append(["total", f"{result['total_cpu_ms_per_frame']:.3f}"])
    print(common.markdown_table(["component", "CPU ms / frame"], rows, align="lr"))
    if result["detect_wall_ms_p50"] is not None:
        print(f"\ndetect calls (model included), wall p50: {result['detect_wall_ms_p50']:.2f} ms")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
