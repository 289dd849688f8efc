"""The `vistream` command line: run, plugins, and the feature subcommands.

Exit codes: 0 done; 2 a user error (:class:`EngineError`: one line on stderr, no traceback);
1 a bug (the traceback is shown). The CLI is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from engine import __version__
from engine.errors import ConfigError, EngineError

logger = logging.getLogger("vistream")

#: Modules that add their own subcommand through ``add_subcommand(subparsers)``.
_SUBCOMMAND_MODULES = (
    "engine.calibrate",
    "engine.emotion_threshold",
    "engine.bench",
    "engine.export",
)
_STATUS_INTERVAL_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="vistream", description="Real-time video analytics: detection, tracking, speed, faces."
    )
    parser.add_argument("--version", action="version", version=f"vistream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = subparsers.add_parser("run", help="run a pipeline on a file, camera or stream")
    run.add_argument("source", help="video file, file:// or rtsp:// URI, /dev/videoN, test://")
    run.add_argument(
        "--pipeline", default="default", help="pipeline YAML file, or the name of a shipped one"
    )
    run.add_argument("--out", type=Path, default=None, help="output directory (default out/<source>)")
    run.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (overrides the pipeline)")
    run.add_argument("--batch-size", type=int, default=None, help="frames per stage call")
    run.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    run.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    run.set_defaults(handler=_run_command)

    plugins = subparsers.add_parser("plugins", help="list installed stages")
    plugins.set_defaults(handler=_plugins_command)

    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # the module exists but one of its imports is missing
                raise
            continue
        module.add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vistream` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except EngineError as error:
        print(f"vistream: error: {error}", file=sys.stderr)
        return 2


def _plugins_command(args: argparse.Namespace) -> int:
    from engine.registry import first_doc_line, installed_stages, resolve_stage

    for info in installed_stages():
        try:
            doc = first_doc_line(resolve_stage(info.name))
        except EngineError as error:
            doc = f"(cannot load: {error})"
        print(f"{info.name:<10} {info.target:<40} [{info.distribution}]  {doc}")
    return 0


def _run_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from engine.config import load_pipeline
    from engine.outputs import open_outputs
    from engine.pipeline import Pipeline
    from engine.sources import open_source

    spec = load_pipeline(args.pipeline)
    if args.device is not None:
        spec = replace(spec, device=args.device)
    if args.batch_size is not None:
        spec = replace(spec, batch_size=args.batch_size)
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames: expected a positive integer, got {args.max_frames}")
    source = open_source(args.source, source_id=_source_id(args.source))
    pipeline = Pipeline.from_spec(spec, with_drawing=not args.no_video)
    out_dir: Path = args.out if args.out is not None else Path("out") / _source_id(args.source)
    outputs = open_outputs(out_dir, pipeline, write_video=not args.no_video)

    progress = _Progress(pipeline, quiet=args.quiet, max_frames=args.max_frames)
    _install_signal_handlers(pipeline)
    status = "failed"
    try:
        pipeline.run(source, outputs.sinks, max_frames=args.max_frames, on_batch=progress.update)
        status = "stopped" if pipeline.stop_requested else "completed"
    finally:
        progress.close()
        summary = _summary(pipeline, status, outputs.paths)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _print_report(summary, out_dir, quiet=args.quiet)
    return 0


def _source_id(uri: str) -> str:
    """A short readable source name: the file stem, or the scheme for streams."""
    if "://" in uri and not uri.startswith("file://"):
        return uri.split("://", 1)[0]
    return Path(uri.removeprefix("file://")).stem or "source"


def _install_signal_handlers(pipeline: Any) -> None:
    """First SIGINT/SIGTERM: finish frames in flight and finalize; second: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if pipeline.stop_requested:
            # Outputs are flushed per batch (and the mp4 is fragmented), so what was written
            # stays valid even though nothing is finalized now.
            logger.warning("second %s: exiting immediately", signal.Signals(signum).name)
            os._exit(128 + signum)
        logger.warning("%s: stopping after the frames in flight", signal.Signals(signum).name)
        pipeline.request_stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


class _Progress:
    """A progress bar for files, a periodic status line for live sources."""

    def __init__(self, pipeline: Any, *, quiet: bool, max_frames: int | None) -> None:
        self.pipeline = pipeline
        self.quiet = quiet
        self.max_frames = max_frames
        self.bar: Any = None
        self.last_status_s = time.monotonic()
        self.frames_since_status = 0

    def update(self, batch: Any) -> None:
        if self.quiet:
            return
        info = self.pipeline.source_info
        if info is not None and not info.live:
            if self.bar is None:
                from tqdm import tqdm

                totals = [n for n in (info.frame_count, self.max_frames) if n]
                self.bar = tqdm(total=min(totals) if totals else None, unit="frame", dynamic_ncols=True)
            self.bar.update(len(batch))
            return
        self.frames_since_status += len(batch)
        now_s = time.monotonic()
        if now_s - self.last_status_s >= _STATUS_INTERVAL_S:
            metrics = self.pipeline.metrics
            age_ms = metrics.end_to_end_ms[-1] if metrics.end_to_end_ms else float("nan")
            logger.info(
                "status: %.1f fps, frame age %.0f ms, %d frames, %d skipped",
                self.frames_since_status / (now_s - self.last_status_s),
                age_ms,
                sum(metrics.frames_out.values()),
                metrics.skipped_frames,
            )
            self.last_status_s, self.frames_since_status = now_s, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(pipeline: Any, status: str, paths: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": status, "vistream": __version__}
    info = pipeline.source_info
    if info is not None:
        summary["source"] = {
            "id": info.source_id,
            "uri": info.uri,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "live": info.live,
        }
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
        f"{summary['frames']} frames in {summary['wall_s']} s ({summary['fps']} fps), "
        f"status {summary['status']}"
    )
    for layer, counts in summary.get("detections_per_class", {}).items():
        top = ", ".join(f"{name} {count}" for name, count in list(counts.items())[:5])
        tracks = summary.get("unique_tracks", {}).get(layer)
        print(f"  {layer}: {top}" + (f"; {tracks} tracks" if tracks is not None else ""))
    if summary["skipped_frames"]:
        print(f"  skipped frames: {summary['skipped_frames']} ({summary['errors']})")
    print(f"outputs in {out_dir}/: " + ", ".join(Path(p).name for p in summary["outputs"].values()))


if __name__ == "__main__":
    sys.exit(main())
