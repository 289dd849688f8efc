"""A :class:`~engine.serve.worker.StreamWorker` in a child process of its own, and its pipe.

The service starts each stream's worker with multiprocessing's ``spawn`` context (a fresh
interpreter: no threads, locks or CUDA state inherited from the service), so a segfault, an
abort or an out-of-memory kill in a decoder or a model ends that process only, and streams use
the cores without sharing a GIL.

The child talks over one duplex :func:`multiprocessing.Pipe`. It sends, unasked:

- ``("status", dict)`` every :data:`STATUS_INTERVAL_S` (and a last one when it ends);
- ``("events", [event, ...])`` as they happen;
- ``("frame", seq, jpeg)`` the annotated frames, only while the service holds a *watch*
  lease (``("watch", seconds, fps)``, renewed while someone watches), at most ``fps`` a
  second, only frames it has not sent: with nobody watching nothing is encoded;

and answers ``("request", id, "jpeg", {"annotated": bool})`` with ``("reply", id, jpeg | None)``.
``("stop",)`` stops the pipeline (its outputs finalized) and ends the process. When the
service disappears (the pipe's other end is closed, even by SIGKILL) the child stops too.

Exit codes: 0 stopped or ended, 3 the pipeline failed (the last status says why).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

#: Seconds between two status messages of a worker.
STATUS_INTERVAL_S = 0.5
#: Exit code of a worker whose pipeline failed.
EXIT_FAILED = 3

_IDLE_POLL_S = 0.1
_WATCH_POLL_S = 0.02


def worker_main(
    config: dict[str, Any],
    data_dir: str,
    conn: Connection,
    *,
    log_level: int = logging.INFO,
    jpeg_quality: int = 80,
) -> None:
    """Entry point of a worker process: run the stream until told to stop or the service is gone.

    Args:
        config: The stream's stored configuration (:meth:`StreamConfig.to_dict`).
        data_dir: The service's data directory.
        conn: The child's end of the pipe.
        log_level: Logging level (the service's).
        jpeg_quality: JPEG quality of the frames it sends.
    """
    from engine.serve.streams import StreamConfig
    from engine.serve.worker import StreamWorker

    name = config.get("name", "?")
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s %(name)s [worker {name}]: %(message)s"
    )
    stop_signal: list[int] = []

    def on_term(signum: int, _frame: FrameType | None) -> None:
        stop_signal.append(signum)

    # Ctrl-C in a terminal reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    worker = StreamWorker(StreamConfig.from_dict(config), data_dir=Path(data_dir), jpeg_quality=jpeg_quality)
    worker.start()
    code = _serve(worker, conn, stop_signal)
    worker.stop()
    try:
        conn.send(("status", worker.status()))
    except (OSError, ValueError):
        pass  # the service is gone
    conn.close()
    sys.exit(code)


def _serve(worker: Any, conn: Connection, stop_signal: list[int]) -> int:
    """The child's loop: answer requests, send status, events and watched frames."""
    watch_until_s, live_fps, sent_seq, sent_s = 0.0, 10.0, -1, 0.0
    event_seq, next_status_s = 0, 0.0
    while True:
        now_s = time.monotonic()
        watching = now_s < watch_until_s
        try:
            if conn.poll(_WATCH_POLL_S if watching else _IDLE_POLL_S):
                message = conn.recv()
                kind = message[0]
                if kind == "stop":
                    return 0
                if kind == "watch":
                    watch_until_s = time.monotonic() + float(message[1])
                    live_fps = float(message[2])
                elif kind == "request":
                    _, request_id, _method, arguments = message
                    result = worker.latest_jpeg(annotated=bool(arguments.get("annotated", True)))
                    conn.send(("reply", request_id, None if result is None else result[1]))
            if stop_signal:
                return 0
            now_s = time.monotonic()
            if now_s >= next_status_s:
                conn.send(("status", worker.status()))
                next_status_s = now_s + STATUS_INTERVAL_S
            event_seq, events = worker.events_since(event_seq)
            if events:
                conn.send(("events", events))
            if now_s < watch_until_s and now_s - sent_s >= 1.0 / live_fps:
                frame = worker.latest_jpeg(annotated=True, after_seq=sent_seq)
                if frame is not None:
                    sent_seq, sent_s = frame[0], now_s
                    conn.send(("frame", frame[0], frame[1]))
            if worker.done:
                status = worker.status()
                conn.send(("status", status))
                return EXIT_FAILED if status["state"] == "failed" else 0
        except (EOFError, OSError, BrokenPipeError):
            logging.getLogger(__name__).info("the service is gone; stopping")
            return 0
