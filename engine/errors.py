"""One exception tree for every error a user can cause.

The CLI turns any :class:`EngineError` into one line on stderr and exit code 2;
anything else is a bug (exit code 1 with a traceback).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(EngineError):
    """A pipeline YAML, a stage argument or a CLI option is invalid."""


class PluginError(EngineError):
    """A stage cannot be found or imported."""


class SourceError(EngineError):
    """A video source cannot be opened or fails while reading."""


class SinkError(EngineError):
    """An output cannot be written."""


class ModelError(EngineError):
    """A model file is missing, unreadable or not what the stage expects."""


class CalibrationError(EngineError):
    """A camera calibration is missing, malformed or geometrically invalid."""


class StageError(EngineError):
    """A stage raised while processing a batch (under the `fail` error policy)."""


class StageContractError(StageError):
    """A stage returned something other than its batch: not a Batch, or frames lost, added,
    replaced or reordered without a declared drop (see :meth:`engine.frame.Batch.drop`)."""


class StageTimeoutError(StageError):
    """A stage call did not return within the pipeline's ``stage_timeout_s``."""


class OutputBusyError(SinkError):
    """The output directory is in use by another run (it holds the lock)."""
