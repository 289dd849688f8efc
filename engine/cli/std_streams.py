"""Standard streams that were closed when the process started (``2>&-``, daemon managers).

:func:`reopen_closed_std_streams` runs when the ``engine.cli`` package is imported, before any
subcommand module: some libraries take ``sys.stderr`` as their default output when they are
imported, and a ``None`` taken then ends the run at its first progress bar or log line.
"""

from __future__ import annotations

import os
import sys


def reopen_closed_std_streams() -> list[int]:
    """Point closed stdin/stdout/stderr at /dev/null before anything opens a file.

    With fd 2 closed (``2>&-``, a daemon manager), Python sets ``sys.stderr`` to None and the
    first progress bar or log line ends the run; worse, the next file opened (``events.jsonl``)
    would get fd 2 and every native library's message would be written into it.

    Returns:
        The descriptors that were closed and now lead to /dev/null.
    """
    reopened = []
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
        reopened.append(fd)
    return reopened
