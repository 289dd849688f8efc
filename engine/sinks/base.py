"""The sink contract: where processed frames go (files, streams, metrics)."""

from __future__ import annotations

from typing import Protocol

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
