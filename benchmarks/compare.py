"""vistream against Ultralytics and the supervision speed example, side by side.

Same video, same ONNX model (``yolo11n_fp32_320.onnx``), same thresholds (confidence 0.25,
NMS IoU 0.7), same classes (car, truck, bus, motorcycle), same camera calibration:

- ``vistream``: the shipped ``traffic`` pipeline (detect + ByteTrack + homography speed),
  drawing stages off, writing its JSONL events and MOT tracks (as ``vistream run --no-video``);
  as shipped, two detect calls of up to three frames run at once (``batch_size: 3``,
  ``workers: 2``, one inference thread each);
- ``vistream_1_worker``: the same with ``workers: 1`` (one detect call at a time, on every
  core): what running detection ahead buys, and what it costs in per-frame latency;
- ``ultralytics``: ``solutions.SpeedEstimator`` (which runs ``YOLO(model).track(...,
  tracker="bytetrack.yaml", persist=True)`` on each frame) fed by ``cv2.VideoCapture``, as in
  Ultralytics' speed-estimation guide, headless; ``meter_per_pixel`` from the calibration;
- ``ultralytics_track`` (reference): ``YOLO(model).track(video, tracker="bytetrack.yaml",
  stream=True)`` alone, Ultralytics' fastest tracking path (no speed); its latency is the time
  between results, which includes decoding the next frame;
- ``supervision``: supervision's ``examples/speed_estimation/ultralytics_example.py``
  reproduced: ``YOLO(model)(frame)`` -> ``PolygonZone`` -> ByteTrack (``trackers``
  package; supervision's own ``sv.ByteTrack`` moved there) -> ``ViewTransformer``
  (``cv2.getPerspectiveTransform``) -> per-track speed from the last second of positions;
- ``ort`` (reference): ONNX Runtime ``session.run`` alone on pre-letterboxed frames.
- the CPU configurations of :mod:`cpu_backends` (``vs_ort``, ``vs_ov``, ``vs_ov_int8``, their
  model-only ``ceiling_*``, ``ul_onnx``, ``ul_openvino``): the ``default`` pipeline (detect +
  track) on ONNX Runtime / OpenVINO bf16 / OpenVINO int8 against Ultralytics ``track()`` on
  the same ONNX and on its OpenVINO model. Ratios are taken to the first tool listed.

Each run is a fresh child process (so its peak RSS is its own) that processes the first
``--frames`` frames of the video once; the first ``--warmup`` of them warm the tool up (lazy
initialisation, caches) and are left out of the timing; track ids count over all of them. Tools
alternate within each of ``--repeats`` rounds (order rotated per round); medians are quoted
and ratios are taken to vistream. ``--video`` adds each tool's drawing and annotated MP4.

Per-frame latency is "frame decoded -> result ready": for Ultralytics and supervision the
time around their per-frame call (their loop decodes the next frame only after); for
vistream, first stage entry -> sinks written (its decoder runs ahead on its own thread, so
its capture -> sink figure also includes the read-ahead queue; reported separately).

    python benchmarks/compare.py --out out/compare [--repeats 3] [--frames 1700]
                                 [--busy-processes 2]
    python benchmarks/compare.py --out out/cpu --tools vs_ov_int8,vs_ov,vs_ort,ceiling_ov_int8,\
        ceiling_ov,ceiling_ort,ul_onnx,ul_openvino

``--busy-processes N`` keeps N pure-Python busy loops running beside every run. It is a
reproducible stand-in for a machine that does other work (a camera box rarely runs one
program only). On this 2-core VM, 2 of them bring Ultralytics down to the ≈ 42 fps the
benchmarking issue quotes for this video.

Writes ``compare.json``, ``compare.md`` (the table for the README) and ``compare.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common  # noqa: E402  (puts the repository root on sys.path)
import cpu_backends
import numpy as np

TOOLS = ("vistream", "vistream_1_worker", "ultralytics", "ultralytics_track", "supervision", "ort")
ALL_TOOLS = TOOLS + cpu_backends.CPU_TOOLS
VEHICLES = ("car", "truck", "bus", "motorcycle")
CONFIDENCE = 0.25
IOU = 0.7
IMGSZ = 320


# --- children: one tool, one process ------------------------------------------------------


def _calibration() -> Any:
    from engine.geometry.calibration import Calibration

    return Calibration.load(common.REPO_ROOT / "calibrations" / "highway_overpass.yaml")


def _runs_per_tool(repeats: int) -> str:
    return "One run per tool" if repeats == 1 else f"Medians of {repeats} runs per tool"


def _class_ids(names: dict[int, str]) -> list[int]:
    return [index for index, name in names.items() if name in VEHICLES]


def child_vistream(
    video: Path,
    frames: int,
    warmup: int,
    out: Path,
    draw: bool,
    workers: int | None = None,
    pipeline: str = "traffic",
) -> dict[str, Any]:

    from engine.config import load_pipeline
    from engine.metrics.timeline import TimelineRecorder, decompose
    from engine.pipeline import Pipeline
    from engine.sinks.outputs import open_outputs
    from engine.sources import open_source

    spec = load_pipeline(pipeline)
    spec = spec.override(workers=workers)
    pipeline = Pipeline.from_spec(spec, with_drawing=draw)
    recorder = TimelineRecorder([named.name for named in pipeline.stages])
    pipeline.observers.append(recorder)
    outputs = open_outputs(out, pipeline, write_video=draw)
    metrics = pipeline.run(open_source(str(video), source_id="highway"), outputs.sinks, max_frames=frames)
    timeline = recorder.timeline()
    timed = timeline.select(np.arange(warmup, len(timeline)))  # the first frames warm up
    segments = decompose(timed)
    processing_ms = segments["end_to_end"] - segments["batch_fill"] - segments["queue"]
    seconds = (timed.written_ns[-1] - timed.stage_start_ns[0, 0]) / 1e9
    return {
        "frames": len(timed),
        "seconds": seconds,
        "latency_ms": processing_ms.tolist(),
        "capture_to_sink_ms": segments["end_to_end"].tolist(),
        "unique_ids": int(metrics.summary()["unique_tracks"].get("objects", 0)),
        "stage_p50_ms": {name: float(np.median(segments[f"stage:{name}"])) for name in timed.stage_names},
    }


def child_ultralytics(
    video: Path, model: Path, frames: int, warmup: int, out: Path, draw: bool
) -> dict[str, Any]:
    import cv2
    from ultralytics import solutions

    calibration = _calibration()
    near = np.asarray(calibration.image_points[:2], dtype=float)  # across the lane at the near end
    meter_per_pixel = calibration.width_m / float(np.linalg.norm(near[1] - near[0]))
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0

    speed = solutions.SpeedEstimator(
        model=str(model),
        tracker="bytetrack.yaml",
        conf=CONFIDENCE,
        iou=IOU,
        imgsz=IMGSZ,
        device="cpu",
        show=False,
        verbose=False,
        fps=fps,
        meter_per_pixel=meter_per_pixel,
        classes=[2, 3, 5, 7],  # COCO ids of car, motorcycle, bus, truck (checked below)
    )
    if sorted(speed.names[i] for i in (2, 3, 5, 7)) != sorted(VEHICLES):
        raise RuntimeError(f"unexpected class names {speed.names}")
    writer = None
    latency_ms: list[float] = []
    ids: set[int] = set()
    started = time.perf_counter()
    while len(latency_ms) < frames:
        if len(latency_ms) == warmup:  # the first frames warm up; timing starts here
            started = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            break
        begin = time.perf_counter()
        result = speed(frame)
        if draw:
            if writer is None:
                height, width = result.plot_im.shape[:2]
                writer = cv2.VideoWriter(
                    str(out / "ultralytics.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                )
            writer.write(result.plot_im)
        latency_ms.append((time.perf_counter() - begin) * 1e3)
        ids.update(int(track_id) for track_id in speed.track_ids)
    seconds = time.perf_counter() - started
    capture.release()
    if writer is not None:
        writer.release()
    timed = latency_ms[warmup:]
    return {"frames": len(timed), "seconds": seconds, "latency_ms": timed, "unique_ids": len(ids)}


class ViewTransformer:
    """Image points -> road-plane metres, as in supervision's speed-estimation example."""

    def __init__(self, source: np.ndarray, target: np.ndarray) -> None:
        import cv2

        self.m = cv2.getPerspectiveTransform(source.astype(np.float32), target.astype(np.float32))

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        import cv2

        if points.size == 0:
            return points
        reshaped = points.reshape(-1, 1, 2).astype(np.float32)
        return cv2.perspectiveTransform(reshaped, self.m).reshape(-1, 2)


def child_supervision(
    video: Path, model: Path, frames: int, warmup: int, out: Path, draw: bool
) -> dict[str, Any]:
    import supervision as sv
    from trackers import ByteTrackTracker
    from ultralytics import YOLO

    calibration = _calibration()
    source = np.asarray(calibration.image_points, dtype=np.float32)
    target = np.asarray(calibration.world_points, dtype=np.float32)  # (0,0) (W,0) (W,L) (0,L) metres
    video_info = sv.VideoInfo.from_video_path(video_path=str(video))
    yolo = YOLO(str(model), task="detect")
    classes = _class_ids(yolo.names)
    zone = sv.PolygonZone(polygon=np.asarray(calibration.zone, dtype=int))
    transformer = ViewTransformer(source, target)
    thickness = sv.calculate_optimal_line_thickness(resolution_wh=video_info.resolution_wh)
    text_scale = sv.calculate_optimal_text_scale(resolution_wh=video_info.resolution_wh)
    box_annotator = sv.BoxAnnotator(thickness=thickness)
    label_annotator = sv.LabelAnnotator(
        text_scale=text_scale, text_thickness=thickness, text_position=sv.Position.BOTTOM_CENTER
    )
    trace_annotator = sv.TraceAnnotator(
        thickness=thickness, trace_length=int(video_info.fps * 2), position=sv.Position.BOTTOM_CENTER
    )

    tracker = ByteTrackTracker(frame_rate=video_info.fps, track_activation_threshold=CONFIDENCE)
    coordinates: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=int(video_info.fps)))
    sink = sv.VideoSink(str(out / "supervision.mp4"), video_info) if draw else None
    latency_ms: list[float] = []
    ids: set[int] = set()
    started = time.perf_counter()
    if sink is not None:
        sink.__enter__()
    for frame in sv.get_video_frames_generator(source_path=str(video), end=frames):
        if len(latency_ms) == warmup:  # the first frames warm up; timing starts here
            started = time.perf_counter()
        begin = time.perf_counter()
        result = yolo(frame, conf=CONFIDENCE, iou=IOU, imgsz=IMGSZ, classes=classes, verbose=False)[0]
        detections = sv.Detections.from_ultralytics(result)
        detections = detections[zone.trigger(detections)]
        detections = tracker.update(detections)
        detections = detections[detections.tracker_id >= 0]  # trackers marks unmatched boxes -1
        points = detections.get_anchors_coordinates(anchor=sv.Position.BOTTOM_CENTER)
        points = transformer.transform_points(points=points).astype(int)
        for tracker_id, [_, y] in zip(detections.tracker_id, points, strict=True):
            coordinates[tracker_id].append(y)
        labels = []
        for tracker_id in detections.tracker_id:
            if len(coordinates[tracker_id]) < video_info.fps / 2:
                labels.append(f"#{tracker_id}")
            else:
                distance = abs(coordinates[tracker_id][-1] - coordinates[tracker_id][0])
                seconds = len(coordinates[tracker_id]) / video_info.fps
                labels.append(f"#{tracker_id} {int(distance / seconds * 3.6)} km/h")
        if sink is not None:
            annotated = trace_annotator.annotate(scene=frame.copy(), detections=detections)
            annotated = box_annotator.annotate(scene=annotated, detections=detections)
            annotated = label_annotator.annotate(scene=annotated, detections=detections, labels=labels)
            sink.write_frame(annotated)
        latency_ms.append((time.perf_counter() - begin) * 1e3)
        ids.update(int(track_id) for track_id in detections.tracker_id)
    seconds = time.perf_counter() - started
    if sink is not None:
        sink.__exit__(None, None, None)
    timed = latency_ms[warmup:]
    return {"frames": len(timed), "seconds": seconds, "latency_ms": timed, "unique_ids": len(ids)}


def child_ort(video: Path, model: Path, frames: int, warmup: int) -> dict[str, Any]:
    frames_iter = common.iter_frames(video, limit=frames)
    seconds, latency_ms = common.time_ort_model_only(model, frames_iter, warmup=warmup)
    return {"frames": len(latency_ms), "seconds": seconds, "latency_ms": latency_ms, "unique_ids": None}


def run_child_tool(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child in cpu_backends.CPU_TOOLS:
        result = cpu_backends.run_cpu_tool(args.child, args, child_vistream)
    elif args.child == "vistream":
        result = child_vistream(args.video, args.frames, args.warmup, args.out, args.video_out)
    elif args.child == "vistream_1_worker":
        result = child_vistream(args.video, args.frames, args.warmup, args.out, args.video_out, workers=1)
    elif args.child == "ultralytics":
        result = child_ultralytics(args.video, args.model, args.frames, args.warmup, args.out, args.video_out)
    elif args.child == "ultralytics_track":
        result = common.time_ultralytics_track(
            args.video,
            args.model,
            frames=args.frames,
            warmup=args.warmup,
            confidence=CONFIDENCE,
            iou=IOU,
            imgsz=IMGSZ,
            class_names=VEHICLES,
        )
    elif args.child == "supervision":
        result = child_supervision(args.video, args.model, args.frames, args.warmup, args.out, args.video_out)
    else:
        result = child_ort(args.video, args.model, args.frames, args.warmup)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    args.result.write_text(json.dumps(result))
    return 0


# --- the parent: alternate, repeat, summarise ---------------------------------------------


def compare(
    video: Path,
    model: Path,
    *,
    tools: list[str],
    repeats: int,
    frames: int,
    warmup: int,
    out: Path,
    draw: bool = False,
    busy_processes: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Run every tool ``repeats`` times, alternating, and summarise (medians, ratios)."""
    from engine.metrics.resources import machine_description

    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    machine = machine_description()
    if set(tools) & set(cpu_backends.CPU_TOOLS):  # the int8 export, once, before any clock
        cpu_backends.prepare_models(model, video, out / "models")
    with busy_loops(busy_processes):
        for round_index in range(repeats):  # each tool once per round, in a fresh process
            order = tools[round_index % len(tools) :] + tools[: round_index % len(tools)]
            for tool in order:
                arguments = [
                    __file__,
                    "--child",
                    tool,
                    "--video",
                    str(video),
                    "--model",
                    str(model),
                    "--frames",
                    str(frames),
                    "--warmup",
                    str(warmup),
                    "--out",
                    str(out / "runs" / tool),
                ]
                if draw:
                    arguments.append("--video-out")
                result = common.run_child(arguments)
                latency = np.asarray(result.pop("latency_ms"), dtype=float)
                capture = result.pop("capture_to_sink_ms", None)
                p50, p95, p99 = np.percentile(latency, [50, 95, 99])
                result.update(fps=result["frames"] / result["seconds"], p50_ms=p50, p95_ms=p95, p99_ms=p99)
                if capture is not None:
                    result["capture_to_sink_p50_ms"] = float(np.percentile(capture, 50))
                runs[tool].append(result)
                if log is not None:
                    log(
                        f"round {round_index + 1}/{repeats} {tool}: {result['fps']:.1f} fps, "
                        f"p50 {p50:.1f} ms, peak RSS {result['peak_rss_mb']:.0f} MB, "
                        f"ids {result['unique_ids']}"
                    )
    return {
        "machine": machine,
        "video": video.name,
        "model": model.name,
        "frames": frames,
        "warmup_frames": warmup,
        "repeats": repeats,
        "busy_processes": busy_processes,
        "draw_and_write_video": draw,
        "thresholds": {"confidence": CONFIDENCE, "iou": IOU, "imgsz": IMGSZ, "classes": list(VEHICLES)},
        "tools": _summarise(runs, base=tools[0]),
    }


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """Keep ``count`` busy-looping Python processes running inside the block."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _summarise(runs: dict[str, list[dict[str, Any]]], base: str = "vistream") -> dict[str, Any]:
    """Medians per tool, run-to-run spread, and ratios to ``base`` (the first tool)."""
    summary: dict[str, Any] = {}
    for tool, tool_runs in runs.items():
        summary[tool] = {
            key: common.median(run.get(key) for run in tool_runs)
            for key in (
                "fps",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "peak_rss_mb",
                "unique_ids",
                "frames",
                "capture_to_sink_p50_ms",
            )
        }
        summary[tool]["fps_spread"] = common.spread(run["fps"] for run in tool_runs)
        summary[tool]["all_fps"] = [round(run["fps"], 2) for run in tool_runs]
        if tool_runs and "stage_p50_ms" in tool_runs[0]:
            summary[tool]["stage_p50_ms"] = {
                name: common.median(run["stage_p50_ms"][name] for run in tool_runs)
                for name in tool_runs[0]["stage_p50_ms"]
            }
    reference = summary.get(base, {})
    for values in summary.values():
        values["ratios_to_vistream"] = {
            key: (round(values[key] / reference[key], 3) if values.get(key) and reference.get(key) else None)
            for key in ("fps", "p50_ms", "p99_ms", "peak_rss_mb")
        }
    return summary


_DESCRIPTIONS = {
    "vistream": "vistream `traffic` (detect + track + speed, JSONL + MOT out)",
    "vistream_1_worker": "vistream `traffic` with `workers: 1` (one detect call at a time)",
    "ultralytics": "Ultralytics `solutions.SpeedEstimator` (per-frame `track`, bytetrack.yaml)",
    "ultralytics_track": "Ultralytics `YOLO.track(video, stream=True)` alone (reference, no speed)",
    "supervision": "supervision speed example (YOLO + zone + trackers ByteTrack + ViewTransformer)",
    "ort": "ONNX Runtime `session.run` alone (reference)",
    **cpu_backends.DESCRIPTIONS,
}


def render_markdown(report: dict[str, Any]) -> str:
    """The comparison table (for the README), with the machine and the conditions."""
    rows = []
    for tool, values in report["tools"].items():
        ratios = values["ratios_to_vistream"]

        def number(key: str, digits: int = 1, values: dict[str, Any] = values) -> str:
            value = values.get(key)
            return "n/a" if value is None else f"{value:.{digits}f}"

        def ratio(key: str, ratios: dict[str, Any] = ratios) -> str:
            return "n/a" if ratios.get(key) is None else f"{ratios[key]:.2f}×"

        rows.append(
            [
                _DESCRIPTIONS.get(tool, tool),
                number("fps"),
                ratio("fps"),
                number("p50_ms"),
                number("p95_ms"),
                number("p99_ms"),
                ratio("p50_ms"),
                number("peak_rss_mb", 0),
                ratio("peak_rss_mb"),
                "n/a" if values.get("unique_ids") is None else f"{values['unique_ids']:.0f}",
            ]
        )
    table = common.markdown_table(
        [
            "pipeline",
            "fps",
            f"fps ÷ {next(iter(report['tools']))}",
            "latency p50 (ms)",
            "p95",
            "p99",
            "p50 ÷ first",
            "peak RSS (MB)",
            "RSS ÷ first",
            "unique track ids",
        ],
        rows,
    )
    vistream = report["tools"].get("vistream", {})
    # The CPU tools run the `default` pipeline (every class); the speed tools the vehicles.
    every_class = [tool for tool in report["tools"] if tool in cpu_backends.CPU_TOOLS]
    if len(every_class) == len(report["tools"]):
        classes = "every class"
    else:
        classes = f"classes {', '.join(VEHICLES)}"
        if every_class:
            classes += f" ({', '.join(every_class)}: every class)"
    notes = [
        f"Machine: {common.machine_line(report['machine'])}. All on CPU.",
        f"`{report['video']}`, first {report['frames']} frames, `{report['model']}` at {IMGSZ}×{IMGSZ}, "
        f"confidence {CONFIDENCE}, NMS IoU {IOU}, {classes}; "
        f"{'annotated video written' if report['draw_and_write_video'] else 'no drawing, no video'}. "
        f"{_runs_per_tool(report['repeats'])}, tools alternating, each run a fresh process "
        f"with its first {report['warmup_frames']} frames untimed (warm-up). "
        "Latency: frame decoded → result ready.",
    ]
    if report.get("busy_processes"):
        notes.append(
            f"Under load: {report['busy_processes']} busy-looping Python processes ran beside every run "
            "(`--busy-processes`), a stand-in for a machine that does other work."
        )
    if vistream.get("capture_to_sink_p50_ms") is not None:
        notes.append(
            f"vistream decodes ahead on its own thread; its capture → sink latency, which includes that "
            f"read-ahead queue, is {vistream['capture_to_sink_p50_ms']:.1f} ms p50 on a file "
            "(a live source keeps only the newest frame)."
        )
    return table + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    plt = common.load_pyplot()
    if plt is None:
        return
    tools = list(report["tools"])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    fps = [report["tools"][tool]["fps"] or 0 for tool in tools]
    axes[0].barh(tools, fps, color="tab:blue")
    for position, value in enumerate(fps):
        axes[0].text(value, position, f" {value:.1f}", va="center", fontsize=8)
    axes[0].set_xlabel("frames per second (median)")
    for position, tool in enumerate(tools):
        values = report["tools"][tool]
        axes[1].errorbar(
            [values["p50_ms"]],
            [position],
            xerr=[[0], [values["p99_ms"] - values["p50_ms"]]],
            fmt="o",
            capsize=3,
        )
    axes[1].set_yticks(range(len(tools)))
    axes[1].set_yticklabels(tools)
    axes[1].set_xlabel("per-frame latency, p50 (dot) to p99 (ms)")
    figure.suptitle(f"{report['video']}, {report['model']}, {report['machine'].get('cpus')} CPUs", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=common.default_shared())
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "out" / "compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1700, help="frames per run (1700: the whole video)")
    parser.add_argument("--warmup", type=int, default=30, help="frames each run processes before timing")
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"some of {','.join(ALL_TOOLS)}; ratios to the first"
    )
    parser.add_argument("--video-out", action="store_true", help="each tool draws and writes an MP4")
    parser.add_argument(
        "--busy-processes", type=int, default=0, help="busy-looping processes running beside every run (0)"
    )
    parser.add_argument("--child", choices=ALL_TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.video = args.video or args.shared / common.DEFAULT_VIDEO
    args.model = args.model or args.shared / common.DEFAULT_MODEL
    common.offline_ultralytics()
    import os

    os.environ.setdefault("VISTREAM_MODELS", str(args.model.parent))
    if args.child:
        return run_child_tool(args)

    if args.busy_processes < 0:
        parser.error(f"--busy-processes: expected 0 or more, got {args.busy_processes}")
    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    unknown = sorted(set(tools) - set(ALL_TOOLS))
    if unknown or not tools:
        parser.error(f"unknown tools {unknown}; expected some of {', '.join(ALL_TOOLS)}")
    for tool in ("ultralytics", "ultralytics_track", "supervision", "ul_onnx", "ul_openvino"):
        if tool in tools and not common.importable("ultralytics"):
            print(f"ultralytics is not installed: skipping {tool}", file=sys.stderr)
            tools.remove(tool)
    args.out.mkdir(parents=True, exist_ok=True)
    report = compare(
        args.video,
        args.model,
        tools=tools,
        repeats=args.repeats,
        frames=args.frames,
        warmup=args.warmup,
        out=args.out,
        draw=args.video_out,
        busy_processes=args.busy_processes,
        log=lambda line: print(line, file=sys.stderr),
    )
    (args.out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (args.out / "compare.md").write_text(markdown)
    plot(report, args.out / "compare.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
