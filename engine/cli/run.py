"""`vistream run`: a pipeline over files, cameras or streams into an output directory.

Stops (SIGINT, SIGTERM, SIGHUP; see :mod:`engine.cli.signals`) drain the frames in flight and
finalize every output; the summary (``summary.json``) is written whatever ended the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine import __version__
from engine.checks import check_number, check_optional_int
from engine.cli.signals import StopSignals
from engine.config import PIPELINES_DIR, load_pipeline, parse_sources
from engine.errors import ConfigError, SinkError
from engine.locations import describe_lookup
from engine.metrics.prometheus import MetricsServer
from engine.metrics.publish import DeliveryCollector
from engine.metrics.run import status_line
from engine.pipeline import Pipeline
from engine.publish.outputs import open_published_outputs
from engine.sinks import JsonlSink
from engine.sinks.outputs import Outputs, source_paths
from engine.sources.uri import mask_credentials

logger = logging.getLogger(__name__)

_STATUS_INTERVAL_S = 5.0
# At the end of a run, how long the publishers may take to deliver what is spooled; the rest
# stays in OUT/spool.sqlite and goes out with the next run into the same directory.
_PUBLISH_DRAIN_S = 30.0

#: After a stop's drain timeout, how long closing the outputs may take before a forced exit.
_FINALIZE_BUDGET_S = 10.0


def add_subcommand(subparsers: Any) -> None:
    """Register ``vistream run``."""
    run = subparsers.add_parser(
        "run",
        help="run a pipeline on files, cameras or streams",
        description="Run a pipeline on one or more sources. Live sources (rtsp://, /dev/videoN, "
        "endless test://) reconnect forever and process the latest frame; files are read to their "
        "end, every frame. With several sources, annotated_<id>.mp4 and tracks_<layer>_<id>.txt "
        "are written per source; events.jsonl holds every source.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="video file, file:// or rtsp:// URI, /dev/videoN, test://; default: the pipeline's source(s)",
    )
    run.add_argument("--pipeline", default="default", help="pipeline YAML file, or the name of a shipped one")
    run.add_argument("-o", "--out", type=Path, default=None, help="output directory (default out/<source>)")
    run.add_argument("--max-frames", type=int, default=None, help="stop each source after N frames")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (overrides the pipeline)")
    run.add_argument("--batch-size", type=int, default=None, help="frames per stage call")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="batches in the leading concurrent stages (detect) at once (overrides the pipeline)",
    )
    run.add_argument(
        "--max-wait-ms",
        type=float,
        default=None,
        help="how long an incomplete batch waits for more frames (default 20)",
    )
    run.add_argument(
        "--frame-policy",
        choices=("latest", "all"),
        default=None,
        help="latest: drop stale frames (default for live sources); all: every frame (default for files)",
    )
    run.add_argument(
        "--drain-timeout-s",
        type=float,
        default=None,
        help="on SIGINT/SIGTERM/SIGHUP, how long queued frames are still processed (default 10); "
        "a stop that takes 10 s longer than this exits at once, summary marked interrupted",
    )
    run.add_argument(
        "--stage-timeout-s",
        default=None,
        help="watchdog per stage call: seconds, off, or auto (30 s for live sources, off for files); "
        "a call that takes longer fails under the pipeline's on_error policy",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (0: any free port)",
    )
    run.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    run.add_argument(
        "--status-interval-s",
        type=float,
        default=_STATUS_INTERVAL_S,
        help="seconds between status lines of live runs",
    )
    run.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="URL",
        help="publish object events to a broker: nats://HOST:PORT (JetStream) or mqtt://HOST:PORT "
        "(QoS 1); repeatable. Events are spooled in OUT/spool.sqlite first, so nothing is lost",
    )
    run.add_argument("--no-video", action="store_true", help="do not write annotated video")
    run.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    run.set_defaults(handler=run_command)


def _help_epilog() -> str:
    """The shipped pipelines with their first comment line, and where files are looked up."""
    lines = ["shipped pipelines (--pipeline NAME):"]
    for path in sorted(PIPELINES_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        lines.append(f"  {path.stem:<18} {first}")
    lines += [
        "",
        textwrap.fill(describe_lookup("models") + ".", width=90),
        textwrap.fill(describe_lookup("calibrations") + ".", width=90),
    ]
    return "\n".join(lines)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX=2`` would, for long live runs.

    Frames are decoded on GStreamer and reader threads and freed on the pipeline thread; with
    glibc's default (8 arenas per core) the freed memory fragments across arenas and the
    resident size creeps up for as long as cameras run: ``benchmarks/soak.py`` measured about
    +3 MB/min with the default and a flat line with 2 arenas, at the same fps. Call it before
    any thread starts. Does nothing when ``MALLOC_ARENA_MAX`` is set or libc is not glibc.

    Returns:
        True when the cap was set.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_arena_max = -8  # from glibc's malloc.h
    return bool(libc.mallopt(m_arena_max, arenas))


def run_command(args: argparse.Namespace) -> int:
    limit_malloc_arenas()

    spec = load_pipeline(args.pipeline).override(
        from_cli=True,
        device=args.device,
        batch_size=args.batch_size,
        max_wait_ms=args.max_wait_ms,
        workers=args.workers,
        drain_timeout_s=args.drain_timeout_s,
        stage_timeout_s=args.stage_timeout_s,
    )
    check_optional_int("--max-frames", args.max_frames, low=1)
    check_number("--status-interval-s", args.status_interval_s, low=0.1, high=86_400)
    if args.sources:
        sources = parse_sources(list(args.sources), frame_policy=args.frame_policy)
    elif spec.sources:
        sources = tuple(
            replace(source, frame_policy=args.frame_policy or source.frame_policy) for source in spec.sources
        )
    else:
        raise ConfigError("no source: give SOURCE arguments or set 'source'/'sources' in the pipeline")
    ids = [source.id for source in sources]
    # Stages first: a stage may load a native runtime that must precede GStreamer's plugins
    # (OpenVINO, see engine.backends.preload_runtime).
    pipeline = Pipeline.from_spec(spec, with_drawing=not args.no_video)
    feeds = [source.build() for source in sources]
    default_out = ids[0] if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}"
    out_dir: Path = args.out if args.out is not None else Path("out") / default_out
    outputs = open_published_outputs(
        out_dir, pipeline, write_video=not args.no_video, source_ids=ids, publish=args.publish
    )
    server = None
    if args.metrics_port is not None:
        delivery = outputs.delivery
        collectors = [DeliveryCollector(delivery)] if delivery is not None else []
        server = MetricsServer(
            pipeline, port=args.metrics_port, host=args.metrics_host, collectors=collectors
        )

    progress = _Progress(
        pipeline, quiet=args.quiet, max_frames=args.max_frames, interval_s=args.status_interval_s
    )
    paths = source_paths(outputs.paths, ids) if len(ids) > 1 else outputs.paths
    stop = _stop_signals(pipeline, out_dir, paths, outputs)
    status = "failed"
    try:
        with stop:
            pipeline.run(feeds, outputs.sinks, max_frames=args.max_frames, on_batch=progress.update)
        status = "stopped" if pipeline.stop_requested else "completed"
    finally:
        progress.close()
        delivered = outputs.close_delivery(drain_timeout_s=_PUBLISH_DRAIN_S)
        if server is not None:
            server.close()
        summary = _summary(pipeline, status, paths)
        if outputs.objects is not None:
            summary["object_events"] = outputs.objects.counts
        if delivered is not None:
            summary["publish"] = delivered.to_dict()
        summary_error = _write_summary(out_dir / "summary.json", summary)
        _finish_outputs(outputs, paths, status)
    if summary_error is not None:
        raise summary_error
    _print_report(summary, out_dir, quiet=args.quiet)
    return 0


def _write_summary(path: Path, summary: dict[str, Any]) -> SinkError | None:
    """Write summary.json; a failure (a full disk) is logged and returned, never raised here,
    so it cannot hide the error that ended the run."""
    try:
        # Masked once more as a whole: a secret that reached a stage's summary or an error.
        path.write_text(mask_credentials(json.dumps(summary, indent=2)) + "\n", encoding="utf-8")
    except OSError as error:
        logger.error("cannot write %s: %s", path, error.strerror)
        return SinkError(f"cannot write {path}: {error.strerror}")
    return None


def _finish_outputs(outputs: Outputs, paths: dict[str, str], status: str) -> None:
    """Write the manifest of what the run produced and give up the directory's lock."""
    if outputs.directory is not None:
        outputs.directory.write_manifest(paths, status)
        outputs.directory.release()


def _stop_signals(pipeline: Pipeline, out_dir: Path, paths: dict[str, str], outputs: Outputs) -> StopSignals:
    """SIGINT/SIGTERM/SIGHUP: one graceful stop (a burst counts once); a second signal after
    the grace window, or a stop that outlasts the drain timeout plus time to finalize, exits
    at once with ``summary.json`` marked ``interrupted`` (JSONL and MP4 are valid as written)."""

    def interrupted(signum: int) -> None:
        for sink in outputs.sinks:  # events.jsonl holds its last lines to settle classes
            if isinstance(sink, JsonlSink) and not sink.write_held():
                logger.error("events.jsonl: the last held lines could not be written (the sink is busy)")
        summary = _summary(pipeline, "interrupted", paths)
        summary["signal"] = signal.Signals(signum).name
        _write_summary(out_dir / "summary.json", summary)
        _finish_outputs(outputs, paths, "interrupted")

    return StopSignals(
        pipeline.request_stop,
        on_force=interrupted,
        deadline_s=pipeline.settings.drain_timeout_s + _FINALIZE_BUDGET_S,
    )


class _Progress:
    """A progress bar while every source is a file; otherwise a status line every few seconds
    (on its own thread, so it also speaks while every camera is down)."""

    def __init__(
        self, pipeline: Any, *, quiet: bool, max_frames: int | None, interval_s: float = _STATUS_INTERVAL_S
    ) -> None:
        self.pipeline = pipeline
        self.quiet = quiet
        self.max_frames = max_frames
        self.interval_s = interval_s
        self.bar: Any = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._report, name="vistream-status", daemon=True)
        if not quiet:
            self._thread.start()

    def update(self, batch: Any) -> None:
        infos = [state.info for state in self.pipeline.sources.values()]
        if self.quiet or not infos or any(info.live for info in infos):
            return
        if self.bar is None:
            from tqdm import tqdm

            counts = [_expected_frames(info.frame_count, self.max_frames) for info in infos]
            total = None if None in counts else sum(n for n in counts if n is not None)
            self.bar = tqdm(total=total, unit="frame", dynamic_ncols=True)
        self.bar.update(len(batch))

    def _report(self) -> None:
        before, before_s = None, time.monotonic()
        while not self._closed.wait(self.interval_s):
            if not any(state.info.live for state in self.pipeline.sources.values()):
                continue
            snapshot, now_s = self.pipeline.metrics.snapshot(), time.monotonic()
            logger.info(
                "status: %s", status_line(snapshot, before, now_s - before_s, self.pipeline.queue_depths())
            )
            before, before_s = snapshot, now_s

    def close(self) -> None:
        self._closed.set()
        if self.bar is not None:
            self.bar.close()


def _expected_frames(frame_count: int | None, max_frames: int | None) -> int | None:
    known = [n for n in (frame_count, max_frames) if n]
    return min(known) if known else None


def _summary(pipeline: Any, status: str, paths: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": status, "vistream": __version__}
    sources = {}
    for source_id, state in pipeline.sources.items():
        info = state.info
        sources[source_id] = {
            "uri": info.uri,  # masked by the source
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "live": info.live,
            "status": state.status,
            "segments": state.segments,
            **({"error": state.error} if state.error else {}),
        }
    if len(sources) == 1:
        summary["source"] = {"id": next(iter(sources)), **next(iter(sources.values()))}
    summary["sources"] = sources
    summary.update(pipeline.metrics.summary())
    try:
        summary["stages"] = pipeline.stage_summaries()
    except Exception:  # a broken summary() must not lose the rest of the report
        logger.exception("a stage summary failed")
    summary["outputs"] = paths
    return summary


def _print_report(summary: dict[str, Any], out_dir: Path, *, quiet: bool) -> None:
    if quiet:
        return
    print(
        f"{summary['frames']} frames in {summary['loop_s']} s ({summary['fps']} fps; "
        f"{summary['startup_s']} s startup), status {summary['status']}"
    )
    for layer, counts in summary.get("detections_per_class", {}).items():
        top = ", ".join(f"{name} {count}" for name, count in list(counts.items())[:5])
        tracks = summary.get("unique_tracks", {}).get(layer)
        print(f"  {layer}: {top}" + (f"; {tracks} tracks" if tracks is not None else ""))
    if summary["skipped_frames"]:
        print(f"  skipped frames: {summary['skipped_frames']} ({summary['errors']})")
    print(f"outputs in {out_dir}/: " + ", ".join(Path(p).name for p in summary["outputs"].values()))
