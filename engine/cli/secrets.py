"""Keeping secrets out of what the CLI shows: log lines, error lines, the process title.

The URI parser (:mod:`engine.sources.uri`) registers every password and secret query value
it sees; everything the CLI prints goes through :func:`engine.sources.uri.mask_credentials`,
so a secret that reached a message some other way (a library's exception text, a path) is
still masked. The process title (``/proc/PID/cmdline``, what ``ps`` shows to every user of the
machine) is rewritten in place on Linux once the arguments were parsed.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

from engine.sources.uri import mask_credentials

logger = logging.getLogger(__name__)

#: Longest error line the CLI prints; longer messages are cut (a YAML alias bomb once made a
#: 34 MB "one-line" error).
MAX_ERROR_CHARS = 2000


class MaskingFormatter(logging.Formatter):
    """A log formatter whose output, tracebacks included, has every known secret masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_credentials(super().format(record))


def mask_log_handlers() -> None:
    """Give every handler of the root logger a :class:`MaskingFormatter` (same format)."""
    for handler in logging.getLogger().handlers:
        current = handler.formatter
        handler.setFormatter(
            MaskingFormatter(current._fmt if current else None, current.datefmt if current else None)
        )


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` masked, on one line, at most ``limit`` characters."""
    line = " ".join(mask_credentials(text).split())
    if len(line) > limit:
        line = line[: limit - 40] + f"... ({len(line) - limit + 40} more characters)"
    return line


def mask_process_title() -> bool:
    """Rewrite this process's command line in place with secrets masked (Linux only).

    ``/proc/PID/cmdline`` is read from the argument area at the top of the process's stack
    (``arg_start``..``arg_end`` in ``/proc/self/stat``); overwriting it there is what
    ``setproctitle`` does. Each secret is replaced by as many ``*`` (never more characters
    than were there), so the area keeps its size.

    Returns:
        True when the title was rewritten (something needed masking).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48, 49 of proc(5)
        if not 0 < arg_start < arg_end or arg_end - arg_start > 1 << 20:
            return False
        original = ctypes.string_at(arg_start, arg_end - arg_start)
    except (OSError, IndexError, ValueError):
        return False
    parts = original.split(b"\0")
    masked_parts = []
    for part in parts:
        text = part.decode("utf-8", "surrogateescape")
        masked = mask_credentials(text).encode("utf-8", "surrogateescape")
        if len(masked) > len(part):  # a secret of 1-2 characters became '***': keep the size
            masked = masked[: len(part)]
        masked_parts.append(masked.ljust(len(part), b"\0") if masked != part else part)
    rewritten = b"\0".join(masked_parts)
    if rewritten == original:
        return False
    ctypes.memmove(arg_start, rewritten, len(rewritten))
    return True
