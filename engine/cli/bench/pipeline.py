"""`vistream bench`: how fast a real pipeline is, where the time goes, how many cameras fit.

``vistream bench pipeline PIPELINE --source SRC -o DIR`` runs the pipeline as ``vistream run``
does (same stages, same sinks, no mocks) with a :class:`~engine.metrics.timeline.TimelineRecorder`
watching, and writes ``bench.json``, ``bench.md`` and PNG plots (see
:mod:`engine.cli.bench.report`). ``--streams 1,2,4,8`` repeats the run with N live-paced copies of
the source and reports the largest N at which every stream keeps its frame rate with a
bounded frame age: the "cameras per machine" figure. ``vistream bench model`` (a trtexec-like
model benchmark) lives in :mod:`engine.cli.bench.model` and is added when that module imports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.cli.bench.report import load_pyplot, render_console, render_markdown, write_plots
from engine.cli.bench.run import RunResult, multi_source_supported, run_configuration, source_kind
from engine.config import load_pipeline
from engine.errors import ConfigError
from engine.metrics.resources import machine_description
from engine.metrics.timeline import Timeline, check_sum, decompose, percentiles

logger = logging.getLogger(__name__)

#: Seconds each configuration of a ``--streams`` sweep runs when neither duration nor frames is given.
DEFAULT_SWEEP_DURATION_S = 10.0


@dataclass(frozen=True)
class BenchOptions:
    """What ``vistream bench pipeline`` runs.

    Attributes:
        pipeline: Pipeline YAML path or shipped pipeline name.
        source: Source URI (file, ``test://``, camera...).
        out_dir: Where bench.json, bench.md, the plots and the run's outputs go.
        streams: Stream counts to run, one configuration each.
        batch_size: Overrides the pipeline's batch size.
        workers: Overrides the pipeline's workers (batches in concurrent stages at once).
        duration_s: Stop each configuration this long after its first output.
        frames: Stop each configuration after this many frames per stream.
        device: Overrides the pipeline's device.
        live: Replay a file as a live camera (paced, stale frames dropped).
        fps: Pace of live replays (default: the file's rate); given for a file, it replays the
            file live (without it a single stream count reads the file as fast as it goes).
        video: Keep drawing stages and write annotated video (off: events and tracks only).
        warmup_frames: Frames per stream left out of every statistic.
        max_age_ms: Frame-age bound (p99, capture to sink) for a stream to count as kept up.
        fps_tolerance: A stream keeps up when it delivers at least ``1 - tolerance`` of its fps.
        plots: Write the PNG plots.
    """

    pipeline: str
    source: str
    out_dir: Path
    streams: tuple[int, ...] = (1,)
    batch_size: int | None = None
    workers: int | None = None
    duration_s: float | None = None
    frames: int | None = None
    device: str | None = None
    live: bool = False
    fps: float | None = None
    video: bool = False
    warmup_frames: int = 10
    max_age_ms: float = 200.0
    fps_tolerance: float = 0.05
    plots: bool = True


def parse_streams(text: str) -> tuple[int, ...]:
    """Parse ``--streams``: ``"4"`` or ``"1,2,4,8"`` -> sorted unique positive counts.

    Raises:
        ConfigError: Empty, non-integer or non-positive values.
    """
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part for part in parts):
        raise ConfigError(f"--streams: expected N or a list like 1,2,4,8, got {text!r}")
    try:
        counts = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--streams: expected integers like 1,2,4,8, got {text!r}") from None
    if any(count < 1 for count in counts):
        raise ConfigError(f"--streams: stream counts must be >= 1, got {text!r}")
    return tuple(sorted(set(counts)))


def bench_pipeline(options: BenchOptions) -> dict[str, Any]:
    """Run every configuration of ``options`` and write bench.json, bench.md and the plots.

    Returns:
        The report written to ``bench.json``.

    Raises:
        ConfigError: Invalid options or pipeline.
        EngineError: The pipeline failed (its own error, naming the stage or source).
    """

    _validate(options)
    if options.plots:
        load_pyplot()  # before any GStreamer pipeline starts (see load_pyplot)
    spec = load_pipeline(options.pipeline).override(
        from_cli=True, device=options.device, batch_size=options.batch_size, workers=options.workers
    )
    kind = source_kind(options.source)
    live = replays_live(options, kind)
    if live and kind == "file" and not options.live:
        logger.info(
            "replaying %s as live cameras (%s)", options.source, "--fps" if options.fps else "--streams sweep"
        )
    duration_s = options.duration_s
    if duration_s is None and options.frames is None and (live or kind != "file"):
        duration_s = DEFAULT_SWEEP_DURATION_S  # a live source never ends by itself
    options.out_dir.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, Any]] = []
    results: list[RunResult] = []
    for count in options.streams:
        logger.info("bench: %d stream(s) of %s%s", count, options.source, " (live)" if live else "")
        result = run_configuration(
            spec,
            options.source,
            count,
            out_dir=options.out_dir,
            live=live,
            fps=options.fps,
            video=options.video,
            frames=options.frames,
            duration_s=duration_s,
        )
        summary = summarise_run(result, options, live=live)
        logger.info(
            "bench: %d stream(s): %.1f fps total, end-to-end p50 %.1f ms, p99 %.1f ms",
            count,
            summary["throughput_fps"]["total"] or float("nan"),
            summary["latency_ms"]["end_to_end"].get("p50_ms", float("nan")),
            summary["latency_ms"]["end_to_end"].get("p99_ms", float("nan")),
        )
        runs.append(summary)
        results.append(result)

    report: dict[str, Any] = {
        "vistream": __version__,
        "machine": machine_description(),
        "pipeline": str(options.pipeline),
        "stages": list(results[0].timeline.stage_names) if results else [],
        "source": options.source,
        "device": str(spec.settings.device),
        "batch_size": spec.settings.batch_size,
        "workers": spec.settings.workers,
        "live": live,
        "replay_fps": options.fps,
        "warmup_frames_per_stream": options.warmup_frames,
        "duration_s": duration_s,
        "frames_per_stream": options.frames,
        "multi_source_pipeline": multi_source_supported(),
        "runs": runs,
    }
    if live:
        report["scaling"] = cameras_per_machine(runs, options)
    if options.plots:
        report["plots"] = write_plots(options.out_dir, report, results)
    (options.out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (options.out_dir / "bench.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _validate(options: BenchOptions) -> None:
    if options.duration_s is not None and options.frames is not None:
        raise ConfigError("give --duration or --frames, not both")
    if options.duration_s is not None and not options.duration_s > 0:
        raise ConfigError(f"--duration: expected a positive number of seconds, got {options.duration_s}")
    if options.frames is not None and options.frames < 1:
        raise ConfigError(f"--frames: expected a positive integer, got {options.frames}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"--batch: expected a positive integer, got {options.batch_size}")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers: expected a positive integer, got {options.workers}")
    if options.fps is not None and not options.fps > 0:
        raise ConfigError(f"--fps: expected a positive number, got {options.fps}")
    if options.warmup_frames < 0:
        raise ConfigError(f"--warmup-frames: expected >= 0, got {options.warmup_frames}")
    if not options.max_age_ms > 0:
        raise ConfigError(f"--max-age-ms: expected a positive number, got {options.max_age_ms}")
    if not 0 <= options.fps_tolerance < 1:
        raise ConfigError(f"--fps-tolerance: expected a fraction in [0, 1), got {options.fps_tolerance}")
    if not options.streams:
        raise ConfigError("--streams: expected at least one stream count")


def replays_live(options: BenchOptions, kind: str) -> bool:
    """Whether a run replays its source as live cameras: ``--live``, or a file with ``--fps``
    (a pace only a live replay has) or a ``--streams`` sweep."""
    if options.live:
        return True
    return kind == "file" and (options.fps is not None or len(options.streams) > 1)


def warmup_mask(timeline: Timeline, warmup_frames: int) -> np.ndarray:
    """(n,) bool: rows after the first ``warmup_frames`` output rows of their source."""
    keep = np.ones(len(timeline), dtype=bool)
    for source_id in np.unique(timeline.source_ids):
        rows = np.flatnonzero(timeline.source_ids == source_id)
        keep[rows[:warmup_frames]] = False
    return keep


def summarise_run(result: RunResult, options: BenchOptions, *, live: bool) -> dict[str, Any]:
    """Latency, queueing, throughput, drops and resources of one configuration (JSON-ready).

    Sets ``result.measured`` and ``result.segments``.
    """
    timeline = result.timeline
    measured = warmup_mask(timeline, options.warmup_frames)
    if not measured.any():  # too short a run for the warm-up: measure everything
        measured = np.ones(len(timeline), dtype=bool)
    complete = timeline.complete
    chosen = timeline.select(measured)
    segments = decompose(chosen)
    result.measured, result.segments = measured, segments
    reference = result.reference_e2e_ms[measured & complete] if result.reference_e2e_ms.size else None

    stage_names = list(timeline.stage_names)
    queueing = segments["batch_fill"] + segments["queue"] + segments["handoff"]
    latency: dict[str, Any] = {
        "end_to_end": percentiles(segments["end_to_end"]),
        "stages": {name: percentiles(segments[f"stage:{name}"]) for name in stage_names},
        "queueing": percentiles(queueing),
        "batch_fill": percentiles(segments["batch_fill"]),
        "queue": percentiles(segments["queue"]),
        "handoff": percentiles(segments["handoff"]),
        "sink": percentiles(segments["sink"]),
    }
    means = {
        name: round(float(values.mean()), 3) if values.size else None for name, values in segments.items()
    }

    per_stream: dict[str, dict[str, Any]] = {}
    for recorder in result.sources:
        sid = recorder.source_id
        rows = chosen.source_ids == sid
        written = chosen.written_ns[rows]
        indices = chosen.index[rows]
        count = int(rows.sum())
        span_s = (written.max() - written.min()) / 1e9 if count > 1 else 0.0
        fps = (count - 1) / span_s if span_s > 0 else None
        expected = int(indices.max() - indices.min() + 1) if count else 0
        source_fps = recorder.info.fps if recorder.info is not None else None
        per_stream[sid] = {
            "frames": count,
            "fps": round(fps, 2) if fps is not None else None,
            "source_fps": round(source_fps, 3) if source_fps else None,
            "dropped_frames": expected - count if live else 0,
            "drop_share": round((expected - count) / expected, 4) if live and expected else 0.0,
            "end_to_end_ms": percentiles(chosen.end_to_end_ms()[rows]),
        }
    fps_values = [stream["fps"] for stream in per_stream.values() if stream["fps"] is not None]
    worst_age_p99 = max(
        (stream["end_to_end_ms"].get("p99_ms", float("inf")) for stream in per_stream.values()),
        default=None,
    )
    summary: dict[str, Any] = {
        "streams": result.streams,
        "frames_written": len(timeline),
        "frames_measured": int(len(segments["end_to_end"])),
        "frames_incomplete": int((~complete[measured]).sum()),
        "wall_s": round(result.wall_s, 3),
        "throughput_fps": {
            "total": round(float(sum(fps_values)), 2) if fps_values else None,
            "min_per_stream": round(float(min(fps_values)), 2) if fps_values else None,
            "per_stream": {sid: stream["fps"] for sid, stream in per_stream.items()},
        },
        "latency_ms": latency,
        "mean_ms": means,
        "decomposition": check_sum(segments, reference),
        "batch_size_mean": round(float(chosen.batch_size.mean()), 2) if len(chosen) else None,
        "streams_detail": per_stream,
        "frame_age_p99_ms_worst": worst_age_p99,
    }
    window = (int(chosen.written_ns.min()), int(chosen.written_ns.max())) if len(chosen) else (None, None)
    summary["resources"] = result.sampler.summary(*window)
    first = result.pipeline_summaries[0] if result.pipeline_summaries else {}
    summary["unique_tracks"] = _sum_tracks(result.pipeline_summaries)
    summary["errors"] = first.get("errors", {})
    summary["skipped_frames"] = sum(s.get("skipped_frames", 0) for s in result.pipeline_summaries)
    if live:
        summary["keeps_up"] = keeps_up(summary, options)
    return summary


def _sum_tracks(summaries: Sequence[dict[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for summary in summaries:
        for layer, count in summary.get("unique_tracks", {}).items():
            totals[layer] = totals.get(layer, 0) + int(count)
    return totals


def keeps_up(summary: dict[str, Any], options: BenchOptions) -> bool:
    """Every stream at its source fps (within the tolerance) and frame age p99 within the bound."""
    streams = summary["streams_detail"]
    if len(streams) < summary["streams"]:
        return False
    for stream in streams.values():
        target = stream["source_fps"]
        if stream["fps"] is None or target is None or stream["fps"] < (1 - options.fps_tolerance) * target:
            return False
        if stream["end_to_end_ms"].get("p99_ms", float("inf")) > options.max_age_ms:
            return False
    return True


def cameras_per_machine(runs: Sequence[dict[str, Any]], options: BenchOptions) -> dict[str, Any]:
    """The largest tested stream count that keeps up, with every smaller tested count too."""
    best = 0
    for run in sorted(runs, key=lambda run: run["streams"]):
        if not run.get("keeps_up"):
            break
        best = run["streams"]
    tested = [run["streams"] for run in runs]
    return {
        "cameras_per_machine": best,
        "at_least": best == max(tested),  # the sweep stopped before the machine did
        "tested_streams": tested,
        "criteria": {
            "fps_tolerance": options.fps_tolerance,
            "frame_age_p99_max_ms": options.max_age_ms,
            "meaning": (
                f"every stream delivers >= {1 - options.fps_tolerance:.0%} of its source fps and "
                f"p99 frame age (capture to sink) <= {options.max_age_ms:g} ms"
            ),
        },
    }


def add_subcommand(subparsers: Any) -> None:
    """Add ``vistream bench`` with its ``pipeline`` (and, when available, ``model``) parsers."""
    bench = subparsers.add_parser("bench", help="benchmark a pipeline (latency, throughput, streams)")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    parser = bench_commands.add_parser(
        "pipeline",
        help="run a pipeline and report per-stage latency, queueing, end-to-end latency, throughput",
        description=(
            "Runs the pipeline as `vistream run` does (same stages and sinks) and records every "
            "frame's capture, stage entry/exit and sink times. Writes bench.json, bench.md and "
            "PNG plots. --streams 1,2,4,8 replays the source as N live cameras per count and "
            "reports how many keep their frame rate with a bounded frame age."
        ),
    )
    parser.add_argument("pipeline", help="pipeline YAML file, or the name of a shipped one")
    parser.add_argument("--source", required=True, help="video file, test://, rtsp://, /dev/videoN")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--streams",
        type=parse_streams,
        default=(1,),
        help="N streams, or a sweep like 1,2,4,8 (files are then replayed live)",
    )
    parser.add_argument("--batch", type=int, default=None, help="frames per stage call")
    parser.add_argument(
        "--workers", type=int, default=None, help="batches in concurrent stages (detect) at once"
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--duration", type=float, default=None, help="seconds per configuration")
    limit.add_argument("--frames", type=int, default=None, help="frames per stream")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (overrides the pipeline)")
    parser.add_argument("--live", action="store_true", help="replay a file as a live camera")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="pace of live replays (default: the file's); replays a file live",
    )
    parser.add_argument("--video", action="store_true", help="keep drawing stages, write annotated video")
    parser.add_argument("--warmup-frames", type=int, default=10, help="frames per stream left out (10)")
    parser.add_argument(
        "--max-age-ms", type=float, default=200.0, help="p99 frame-age bound for a stream to keep up (200)"
    )
    parser.add_argument(
        "--fps-tolerance",
        type=float,
        default=0.05,
        help="a stream keeps up at >= (1 - this) x its fps (0.05)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.set_defaults(handler=_pipeline_command)
    try:
        model_module = importlib.import_module("engine.cli.bench.model")
    except ModuleNotFoundError as error:
        if error.name != "engine.cli.bench.model":
            raise
    else:
        model_module.add_model_parser(bench_commands)

    def usage(_args: argparse.Namespace) -> int:
        bench.print_help()
        return 2

    bench.set_defaults(handler=usage)


def _pipeline_command(args: argparse.Namespace) -> int:
    options = BenchOptions(
        pipeline=args.pipeline,
        source=args.source,
        out_dir=args.out,
        streams=args.streams,
        batch_size=args.batch,
        workers=args.workers,
        duration_s=args.duration,
        frames=args.frames,
        device=args.device,
        live=args.live,
        fps=args.fps,
        video=args.video,
        warmup_frames=args.warmup_frames,
        max_age_ms=args.max_age_ms,
        fps_tolerance=args.fps_tolerance,
        plots=not args.no_plots,
    )
    report = bench_pipeline(options)
    print(render_console(report))
    print(
        f"results in {options.out_dir}/: bench.json, bench.md"
        + (
            ", " + ", ".join(Path(p).name for p in report.get("plots", {}).values())
            if report.get("plots")
            else ""
        )
    )
    return 0
