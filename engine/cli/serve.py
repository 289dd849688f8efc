"""`vistream serve`: run the camera service (REST API, live view, calibration editor).

Usage::

    vistream serve [--host 127.0.0.1] [--port 8080] [--data DIR] [--token TOKEN] [--publish URL]...
                   [--cluster auto|HOST:PORT|ray://HOST:10001 [--stream-cpus 1] [--stream-gpus 0]]

Then open http://127.0.0.1:8080/ (the API's docs are at /docs). Streams added through the
API or the page are stored under ``--data`` and resumed when the service starts again.
SIGINT/SIGTERM stop every stream's worker (outputs finalized) and the service.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

from engine.checks import check_int, check_number
from engine.cli.run import limit_malloc_arenas
from engine.errors import ConfigError
from engine.publish.base import check_publish_url
from engine.serve.security import TOKEN_ENV, is_loopback, require_token_for

logger = logging.getLogger(__name__)


def add_subcommand(subparsers: Any) -> None:
    """Register ``vistream serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the camera service: REST API, live view, calibration editor",
        description="Serve many camera streams, each through its own pipeline in its own worker "
        "process (restarted when it dies), managed over a REST API and a web page. Binds "
        f"127.0.0.1 by default; another address needs a token (--token or ${TOKEN_ENV}).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("serve-data"),
        help="data directory: registry, calibrations, outputs",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"access token for changes and video (default ${TOKEN_ENV}); required beyond 127.0.0.1",
    )
    parser.add_argument(
        "--live-fps", type=float, default=10.0, help="most live-view frames a second per stream"
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=80, help="JPEG quality of snapshots and live frames"
    )
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run each stream's worker as a Ray actor on this cluster: auto, HOST:PORT of the head, "
        "or ray://HOST:10001 (see README 'Running on a cluster')",
    )
    parser.add_argument(
        "--cluster-data",
        type=Path,
        default=None,
        help="the data directory as the cluster's nodes see it (shared storage; default --data)",
    )
    parser.add_argument(
        "--stream-cpus", type=float, default=1.0, help="logical CPUs each stream reserves on the cluster"
    )
    parser.add_argument(
        "--stream-gpus",
        type=float,
        default=0.0,
        help="GPUs each stream reserves on the cluster (0.25: a quarter)",
    )
    parser.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="URL",
        help="publish the object events of every stream that sets no 'publish' of its own: "
        "nats://HOST:PORT (JetStream) or mqtt://HOST:PORT; repeatable",
    )
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request (tokens masked)")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Run the service until SIGINT/SIGTERM (then every worker is stopped, outputs finalized)."""
    try:
        import uvicorn

        from engine.serve.app import create_app
    except ImportError as error:
        raise ConfigError(
            f"vistream serve needs the 'serve' extra (pip install 'vistream[serve]'): {error}"
        ) from error
    from engine.serve.service import StreamService

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    require_token_for(args.host, token)
    check_int("--port", args.port, low=0, high=65535)
    check_number("--live-fps", args.live_fps, low=0.1, high=60)
    check_int("--jpeg-quality", args.jpeg_quality, low=1, high=100)
    for url in args.publish:  # before a cluster is joined: a typo fails at once
        check_publish_url(url)
    limit_malloc_arenas()
    # The workers are fresh interpreters: glibc reads this when they start (see limit_malloc_arenas).
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    level = logging.getLogger().getEffectiveLevel()
    placement = None
    if args.cluster is not None:
        from engine.cluster.placement import RayPlacement

        placement = RayPlacement(
            args.cluster,
            data_dir=(args.cluster_data or args.data).resolve(),
            cpus_per_stream=args.stream_cpus,
            gpus_per_stream=args.stream_gpus,
            jpeg_quality=args.jpeg_quality,
            log_level=level,
        )
        placement.connect()
    try:
        service = StreamService(
            args.data,
            live_fps=args.live_fps,
            jpeg_quality=args.jpeg_quality,
            log_level=level,
            placement=placement,
            publish=args.publish,
        )
    except OSError as error:
        raise ConfigError(f"cannot use data directory {args.data}: {error.strerror}") from error
    # On loopback, only loopback names: a page elsewhere cannot reach it by DNS rebinding.
    hosts = ["127.0.0.1", "localhost", args.host] if is_loopback(args.host) else None
    app = create_app(service, token=token, allowed_hosts=hosts)
    if args.access_log:
        logging.getLogger("uvicorn.access").addFilter(_MaskTokens())
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # keep the CLI's logging; uvicorn's loggers propagate to it
        access_log=args.access_log,
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    logger.info("serving on http://%s:%d/ (data in %s)", args.host, args.port, service.data_dir)
    try:
        uvicorn.Server(config).run()
    finally:
        if placement is not None:
            placement.close()
    return 0


class _MaskTokens(logging.Filter):
    """Hides ``token=...`` query values in access log lines."""

    _TOKEN = re.compile(r"(token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        record.args = tuple(
            self._TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args or ()
        )
        return True
