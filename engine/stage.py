"""The stage contract every built-in and third-party stage follows.

A stage is built from YAML keyword arguments (cheap, validating constructor), then opened
once with a :class:`Context` (heavy work: models, GPU), called on batches, told when a
source ends, and closed — in reverse order, even when a later stage failed to open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from engine.frame import Batch, SourceInfo


@dataclass(frozen=True)
class Context:
    """What a stage may know about the run when it opens.

    Attributes:
        device: Where tensors and models live: ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        sources: Facts about every source of the run, keyed by ``source_id``.
        config_dir: Directory of the pipeline YAML (relative paths were resolved against it).
        workers: How many batches this stage will be given at once, one per thread (more
            than 1 only for leading ``concurrent`` stages of a pipeline with ``workers``); a
            stage sizes its own thread use by it, e.g. ``detect`` gives each model call
            ``cores // workers`` threads.
    """

    device: str = "cpu"
    sources: Mapping[str, SourceInfo] = field(default_factory=dict)
    config_dir: Path = Path(".")
    workers: int = 1


@runtime_checkable
class Stage(Protocol):
    """Processes whole batches of frames; see the module docstring for the lifecycle."""

    def open(self, context: Context) -> None:
        """Allocate models, streams and state."""

    def __call__(self, batch: Batch) -> Batch:
        """Process one batch and return it (usually the same object, with layers added)."""

    def end_of_stream(self, source_id: str) -> None:
        """Drop per-source state: the source ended or restarted."""

    def close(self) -> None:
        """Release what ``open`` allocated."""


class BaseStage:
    """A stage with a no-op lifecycle: subclass it and implement ``__call__``.

    Attributes:
        draws: True for stages that only paint on ``Frame.canvas``. The pipeline leaves them
            out when no video is written (``--no-video``), so drawing never costs throughput
            that nobody sees.
        concurrent: True for stages that keep no state from one batch to the next and may
            be called on several batches at once from different threads. When such stages
            lead the pipeline and ``workers`` > 1, they run ahead of the others on that many
            threads (:mod:`engine.run_ahead`). Trackers and anything per-source must not.
    """

    draws: ClassVar[bool] = False
    concurrent: ClassVar[bool] = False

    def open(self, context: Context) -> None:
        """Do nothing; override to load models or allocate state."""

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def end_of_stream(self, source_id: str) -> None:
        """Do nothing; override to drop per-source state."""

    def close(self) -> None:
        """Do nothing; override to release resources."""
