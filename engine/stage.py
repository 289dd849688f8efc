"""The stage contract every built-in and third-party stage follows.

A stage is built from YAML keyword arguments (cheap, validating constructor), then opened
once with a :class:`Context` (heavy work: models, GPU), called on batches, told when a
source ends, and closed — in reverse order, even when a later stage failed to open.

Everything the pipeline reads from a stage is declared on :class:`Stage` below: the four
lifecycle methods, the class attributes ``draws`` and ``concurrent``, the instance attribute
``tracked_layers`` and ``summary()``. :class:`BaseStage` gives each a default, so a stage
that subclasses it only writes ``__call__`` and what it changes. A class that does not
subclass it must define every member; :func:`missing_members` says which it lacks (the
registry refuses such a class with that list).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from engine.device import CPU, Device
from engine.errors import StageContractError
from engine.frame import Batch, SourceInfo


@dataclass(frozen=True)
class Context:
    """What a stage may know about the run when it opens.

    Attributes:
        device: Where tensors and models live (``Device("cpu")`` or a CUDA device).
        sources: Facts about every source of the run, keyed by ``source_id``.
        config_dir: Directory of the pipeline YAML (relative paths were resolved against it).
        workers: How many batches this stage will be given at once, one per thread (more
            than 1 only for leading ``concurrent`` stages of a pipeline with ``workers``); a
            stage sizes its own thread use by it, e.g. ``detect`` gives each model call
            ``cores // workers`` threads.
        batch_size: The most frames a call gets (the pipeline's ``batch_size``); e.g.
            ``detect`` warms its model up at that size too.
    """

    device: Device = CPU
    sources: Mapping[str, SourceInfo] = field(default_factory=dict)
    config_dir: Path = Path(".")
    workers: int = 1
    batch_size: int = 1


@runtime_checkable
class Stage(Protocol):
    """Processes whole batches of frames; see the module docstring for the lifecycle.

    Attributes:
        draws: True for stages that only paint on ``Frame.canvas``. The pipeline leaves them
            out when no video is written (``--no-video``), so drawing never costs throughput
            that nobody sees.
        concurrent: True for stages that keep no state from one batch to the next and may
            be called on several batches at once from different threads. When such stages
            lead the pipeline and ``workers`` > 1, they run ahead of the others on that many
            threads (:mod:`engine.run_ahead`). Trackers and anything per-source must not.
        tracked_layers: Detection layers this stage gives track ids to (a tracker's
            ``layer``); the run writes a MOT file for each. Empty for other stages.
    """

    draws: ClassVar[bool]
    concurrent: ClassVar[bool]
    tracked_layers: tuple[str, ...]

    def open(self, context: Context) -> None:
        """Allocate models, streams and state."""

    def __call__(self, batch: Batch) -> Batch:
        """Process one batch and return it (usually the same object, with layers added)."""

    def end_of_stream(self, source_id: str) -> None:
        """Drop per-source state: the source ended or restarted."""

    def close(self) -> None:
        """Release what ``open`` allocated."""

    def summary(self) -> dict[str, Any] | None:
        """What the stage reports about the run for ``summary.json``, or None for nothing."""


#: Every member of :class:`Stage`, as :func:`missing_members` checks them.
STAGE_MEMBERS = (
    "draws",
    "concurrent",
    "tracked_layers",
    "open",
    "__call__",
    "end_of_stream",
    "close",
    "summary",
)


class BaseStage:
    """A stage with a no-op lifecycle and the contract's defaults: subclass it and implement
    ``__call__`` (see :class:`Stage` for what each attribute means)."""

    draws: ClassVar[bool] = False
    concurrent: ClassVar[bool] = False
    tracked_layers: tuple[str, ...] = ()

    def open(self, context: Context) -> None:
        """Do nothing; override to load models or allocate state."""

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def end_of_stream(self, source_id: str) -> None:
        """Do nothing; override to drop per-source state."""

    def close(self) -> None:
        """Do nothing; override to release resources."""

    def summary(self) -> dict[str, Any] | None:
        """Report nothing; override to add a section to ``summary.json``."""
        return None


def missing_members(stage_class: type) -> list[str]:
    """The members of the stage contract that ``stage_class`` does not define (as class
    attributes: an instance may replace ``tracked_layers`` in ``__init__``, but the class
    declares its default)."""
    return [name for name in STAGE_MEMBERS if not hasattr(stage_class, name)]


@dataclass(frozen=True)
class NamedStage:
    """A constructed stage and the name metrics and summaries know it by."""

    name: str
    stage: Stage


def check_stage_output(stage_name: str, given: list[tuple[str, int]], returned: object) -> Batch:
    """Enforce what every stage returns: the frames it was given, in order, less declared drops.

    Frames are compared by ``(source_id, index)``, so a stage may return new ``Frame``
    objects for the same frames (a copy with another image) but may not lose, add, repeat or
    reorder them; a frame taken out with :meth:`Batch.drop` is expected to be missing.

    Args:
        stage_name: For the message.
        given: ``(source_id, index)`` of the frames the stage was called with, in order.
        returned: What the stage returned.

    Returns:
        ``returned``, now known to be a valid batch.

    Raises:
        StageContractError: Naming the stage and what is wrong.
    """
    if not isinstance(returned, Batch):
        raise StageContractError(
            f"stage '{stage_name}' returned {type(returned).__name__}, expected the Batch it was given"
        )
    dropped = {(frame.source_id, frame.index) for frame, _reason in returned.dropped}
    expected = [key for key in given if key not in dropped]
    keys = [(frame.source_id, frame.index) for frame in returned.frames]
    if keys == expected:
        return returned
    missing = list((Counter(expected) - Counter(keys)).elements())
    extra = list((Counter(keys) - Counter(expected)).elements())
    if missing:
        problem = f"lost {len(missing)} of {len(expected)} frames (first: {_frame_name(missing[0])})"
    elif extra:
        problem = f"added {len(extra)} frame(s) (first: {_frame_name(extra[0])})"
    else:
        problem = "reordered its frames"
    raise StageContractError(
        f"stage '{stage_name}' {problem}; a stage returns every frame it was given, in order, "
        "or takes one out with batch.drop(frame, reason)"
    )


def _frame_name(key: tuple[str, int]) -> str:
    return f"{key[0]} frame {key[1]}"
