"""Who owns an output directory: one run at a time, and a run's files replaced as a whole.

- **A lock.** A run holds an exclusive ``flock`` on ``<out>/.vistream.lock`` for as long as it
  writes there; a second run into the same directory fails at once with
  :class:`~engine.errors.OutputBusyError` naming the holder's pid. The kernel releases the lock
  when the process ends, however it ends, so a killed run never leaves a stale lock.
- **A manifest.** ``manifest.json`` lists what the run wrote (name, bytes) and how it ended.
- **Replace, never mix.** A directory that holds the outputs of an earlier run gets those
  outputs removed before the new run writes anything: the files its manifest lists (and, for
  directories written before manifests existed, the engine's own file names: ``events.jsonl``,
  ``annotated*.mp4``, ``tracks_*.txt``, ``summary.json``). Files the engine did not write are
  never touched, and neither is a symlink put in place of an output (to a FIFO, another
  disk): it is written through. So a run into an old ``--out`` never leaves an old ``annotated.mp4`` beside
  new events. (Refusing such a directory was the alternative; replacing keeps ``vistream run``
  repeatable with the same command, and the lock already protects a run in progress.)
- **Names.** Layer names and source ids become parts of file names; :func:`check_file_part`
  refuses separators, ``..`` and anything but letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, OutputBusyError, SinkError

logger = logging.getLogger(__name__)

LOCK_NAME = ".vistream.lock"
MANIFEST_NAME = "manifest.json"
#: The engine's own output names, for directories written before manifests existed.
_LEGACY_OUTPUTS = re.compile(
    r"^(events\.jsonl|annotated(_[A-Za-z0-9._-]+)?\.mp4|tracks_[A-Za-z0-9._-]+\.txt|summary\.json)$"
)
_FILE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_file_part(kind: str, name: Any) -> str:
    """``name`` can be part of a file name: 1-64 letters, digits, ``.``, ``_``, ``-``, no ``..``.

    Raises:
        ConfigError: Naming ``kind`` (``layer``, ``source id``) and the value.
    """
    if not isinstance(name, str) or not _FILE_PART.match(name) or ".." in name:
        raise ConfigError(
            f"{kind} {name!r} cannot name an output file: use 1-64 letters, digits, '.', '_' or '-' "
            "(no path separators, no '..')"
        )
    return name


class OutputDirectory:
    """An output directory owned by this run (see the module docstring).

    Args:
        path: The directory; created with its parents.

    Raises:
        SinkError: The directory cannot be created or its lock file written.
        OutputBusyError: Another run holds the directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise SinkError(f"cannot create output directory {path}: {error.strerror}") from error
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            self._fd = None
            raise OutputBusyError(
                f"output directory {path} is in use by another vistream run{holder}; "
                "give this run another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        self.started_s = time.time()

    def replace_earlier_outputs(self) -> list[str]:
        """Remove the outputs of an earlier run (its manifest's files, or the engine's names).

        Returns:
            The names removed.
        """
        names = set(_manifest_files(self.path / MANIFEST_NAME))
        names |= {entry.name for entry in self.path.iterdir() if _LEGACY_OUTPUTS.match(entry.name)}
        names.add(MANIFEST_NAME)
        removed = []
        for name in sorted(names):
            target = self.path / name
            if Path(name).name != name or target.is_symlink() or not target.is_file():
                # A manifest only names plain files inside the directory; a symlink in place
                # of an output (to a FIFO, another disk) was put there on purpose: kept.
                continue
            try:
                target.unlink()
            except OSError as error:
                raise SinkError(f"cannot replace {target} of an earlier run: {error.strerror}") from error
            removed.append(name)
        if [name for name in removed if name != MANIFEST_NAME]:
            logger.info("replacing the outputs of an earlier run in %s (%d files)", self.path, len(removed))
        return removed

    def write_manifest(self, paths: Mapping[str, str], status: str) -> SinkError | None:
        """Write ``manifest.json``: the files of ``paths`` that exist, with their sizes.

        Returns:
            The error (logged) when it cannot be written, so it never hides the run's own.
        """
        files = {}
        for name, path in paths.items():
            target = Path(path)
            if target.is_file() and target.parent.resolve() == self.path.resolve():
                files[name] = {"file": target.name, "bytes": target.stat().st_size}
        manifest = {
            "status": status,
            "pid": os.getpid(),
            "started_unix_s": round(self.started_s, 3),
            "files": files,
        }
        try:
            (self.path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            logger.error("cannot write %s: %s", self.path / MANIFEST_NAME, error.strerror)
            return SinkError(f"cannot write {self.path / MANIFEST_NAME}: {error.strerror}")
        return None

    def release(self) -> None:
        """Give up the lock (idempotent); the lock file stays, empty of meaning."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _manifest_files(path: Path) -> list[str]:
    """The file names an earlier manifest lists (an unreadable manifest lists none)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return [str(entry["file"]) for entry in manifest["files"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
