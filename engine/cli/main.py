"""The `vistream` command line: run, plugins, and the feature subcommands.

Exit codes: 0 done; 2 a user error (:class:`EngineError`: one line on stderr, no traceback);
1 a bug (the traceback is shown). The CLI is the only place that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine import __version__
from engine.cli import calibrate, emotion_threshold, run, serve
from engine.cli.bench import pipeline as bench
from engine.cli.export import model as export
from engine.cli.secrets import mask_log_handlers, mask_process_title, one_line
from engine.cli.std_streams import reopen_closed_std_streams
from engine.errors import EngineError
from engine.registry import first_doc_line, installed_stages, resolve_stage
from engine.sources.gst import prefer_gnu_unwinder
from engine.sources.uri import parse_uri

logger = logging.getLogger("vistream")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="vistream", description="Real-time video analytics: detection, tracking, speed, faces."
    )
    parser.add_argument("--version", action="version", version=f"vistream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    run.add_subcommand(subparsers)

    plugins = subparsers.add_parser("plugins", help="list installed stages")
    plugins.set_defaults(handler=_plugins_command)

    for module in (calibrate, emotion_threshold, bench, export, serve):
        module.add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vistream` console script."""
    reopen_closed_std_streams()  # again: cheap, and main() may be called without the package init
    prefer_gnu_unwinder()  # before a plugin could load GStreamer on its own
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    level = logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mask_log_handlers()
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        _parse_uris_in(args)  # registers their secrets before anything is logged or shown
        mask_process_title()
        return int(args.handler(args))
    except EngineError as error:
        _say_error(one_line(str(error)))
        return 2


def _parse_uris_in(args: argparse.Namespace) -> None:
    """Parse the URIs among the arguments early, so their passwords are known secrets."""
    for value in getattr(args, "sources", None) or ():
        if isinstance(value, str) and "://" in value and not value.lower().startswith("synthetic://"):
            parse_uri(value)


def _say_error(line: str) -> None:
    """The error line on stderr; a closed or broken stderr must not turn exit 2 into a crash."""
    try:
        print(f"vistream: error: {line}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _plugins_command(args: argparse.Namespace) -> int:
    for info in installed_stages():
        try:
            doc = first_doc_line(resolve_stage(info.name))
        except EngineError as error:
            doc = f"(cannot load: {error})"
        print(f"{info.name:<10} {info.target:<40} [{info.distribution}]  {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
