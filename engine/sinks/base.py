"""The sink contract: where processed frames go (files, streams, metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.errors import SinkError
from engine.frame import Batch
from engine.stage import Context


class Sink(Protocol):
    """Writes processed batches somewhere, durably as it goes.

    A sink writes each batch as it arrives and flushes, so a run that stops halfway leaves
    valid output for every frame already written; ``close`` finalizes and is idempotent.
    """

    def open(self, context: Context) -> None:
        """Create the output; raise SinkError when it cannot be written."""

    def write(self, batch: Batch) -> None:
        """Write every frame of the batch."""

    def end_of_stream(self, source_id: str) -> None:
        """A source ended; finish anything kept per source."""

    def close(self) -> None:
        """Finalize the output; safe to call twice."""


@runtime_checkable
class SegmentEndSink(Protocol):
    """A sink that also wants to hear when a reconnecting source loses its connection.

    Optional: the pipeline calls :meth:`segment_ended` on sinks that have it, right after the
    lost segment's last frame (its stages already had ``end_of_stream``). The source goes on
    (its next segment's frames follow later), so nothing per source is finalized here; the
    objects sink ends that source's objects at the loss instead of at the reconnect.
    """

    def segment_ended(self, source_id: str, reason: str) -> None:
        """The source's connection was lost (``reason`` in words, credentials masked)."""


SOURCE_PLACEHOLDER = "{source_id}"


def source_output_path(path: Path, source_id: str, run: int = 1) -> Path:
    """Return the file of one source's ``run``-th stream for an output path.

    ``{source_id}`` in ``path`` becomes the source id; a source that restarts after its end
    of stream (``run`` 2, 3, ...) gets ``name-2.ext``, ``name-3.ext``, so a finished file is
    never overwritten or mixed with the next stream's.
    """
    resolved = Path(str(path).replace(SOURCE_PLACEHOLDER, source_id))
    if run > 1:
        resolved = resolved.with_name(f"{resolved.stem}-{run}{resolved.suffix}")
    return resolved


def next_source_path(path: Path, source_id: str, run: int, runs: Mapping[str, int], *, what: str) -> Path:
    """The file for ``source_id``'s ``run``-th stream, refusing to mix sources in one file.

    Args:
        path: The sink's output path, possibly holding ``{source_id}``.
        source_id: The source whose frames start a new file.
        run: 1 for a source's first stream, 2 after its first end, and so on.
        runs: Sources the sink has written so far (source id -> runs).
        what: What the output is, for the error message (``"video output"``).

    Raises:
        SinkError: ``path`` has no ``{source_id}`` and already holds another source.
    """
    if SOURCE_PLACEHOLDER not in str(path):
        owner = next((known for known in runs if known != source_id), None)
        if owner is not None:
            raise SinkError(
                f"{what} {path} already holds source {owner!r}; frames of "
                f"{source_id!r} need their own file: put {SOURCE_PLACEHOLDER} in the path, "
                f"e.g. {path.with_name(SOURCE_PLACEHOLDER + path.suffix)}"
            )
    return source_output_path(path, source_id, run)
