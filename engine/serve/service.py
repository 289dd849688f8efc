"""The camera service: the registry of streams, one supervised worker each, and calibrations.

:class:`StreamService` is what the HTTP API calls; it knows nothing of HTTP. Every change is
validated first and stored before a worker is started, so a restarted service resumes exactly
the streams it had. Errors are :class:`~engine.errors.EngineError` subclasses with one-line
messages; :class:`NotFoundError` and :class:`ConflictError` say which kind of 4xx they are.

Data directory layout::

    DATA/streams.db                 the registry (SQLite)
    DATA/pipelines/*.yaml           the operator's own pipelines (besides the shipped ones)
    DATA/calibrations/<name>.yaml   calibrations saved from the editor
    DATA/streams/<name>/<start>/    each worker run's outputs (events.jsonl, tracks, video)
    DATA/streams/<name>/spool.sqlite  the stream's event spool, kept across its runs (publishing)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CalibrationError, ConfigError
from engine.geometry.calibration import Calibration
from engine.geometry.grid import grid_segments, grid_spacing
from engine.publish.base import check_publish_url
from engine.serve.registry import StreamRegistry
from engine.serve.streams import (
    PipelineCatalog,
    StreamConfig,
    calibration_stages,
    pipeline_calibration,
    public_view,
    validate_stream,
)
from engine.serve.supervisor import StreamSupervisor

logger = logging.getLogger(__name__)

#: Keys a PATCH may change (the name is the stream's identity and cannot).
MUTABLE_KEYS = ("uri", "pipeline", "source", "calibration", "record_video", "publish", "enabled")


class NotFoundError(ConfigError):
    """No stream has this name."""


class ConflictError(ConfigError):
    """The request clashes with the current state (a name taken, no frame yet)."""


class StreamService:
    """Streams, their workers and their calibrations (see the module docstring).

    Args:
        data_dir: Where the registry, calibrations and outputs live (created when missing).
        live_fps: Most live-view frames a second per stream.
        jpeg_quality: JPEG quality of snapshots and live frames.
        log_level: Logging level of the worker processes.
        placement: Where workers run instead of local child processes: an
            :class:`engine.cluster.placement.RayPlacement` (``--cluster``), or None.
        publish: Broker URLs for the object events of streams whose ``publish`` is null
            (``vistream serve --publish``).

    Raises:
        ConfigError: A ``publish`` URL is invalid, or the registry cannot be opened.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        live_fps: float = 10.0,
        jpeg_quality: int = 80,
        log_level: int = logging.INFO,
        placement: Any = None,
        publish: Sequence[str] = (),
    ) -> None:
        self.default_publish = [check_publish_url(url) for url in publish]
        self.data_dir = Path(data_dir).resolve()
        self.catalog = PipelineCatalog(self.data_dir)
        self.registry = StreamRegistry(self.data_dir / "streams.db")
        self.live_fps = live_fps
        self.jpeg_quality = jpeg_quality
        self.log_level = log_level
        self.placement = placement
        self._supervisors: dict[str, Any] = {}
        self._lock = threading.RLock()  # one change at a time: add/patch/delete

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start a worker for every enabled stream of the registry."""
        for config in self.registry.list():
            if config.enabled:
                self._start_worker(config)
        logger.info("%d stream(s) resumed from %s", len(self._supervisors), self.registry.path)

    def close(self) -> None:
        """Stop every worker (in parallel) and close the registry."""
        with self._lock:
            supervisors, self._supervisors = list(self._supervisors.values()), {}
        threads = [threading.Thread(target=supervisor.stop) for supervisor in supervisors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.registry.close()

    def _start_worker(self, config: StreamConfig, restarts: int = 0) -> None:
        make = StreamSupervisor if self.placement is None else self.placement.supervisor
        if config.publish is None:  # the service's brokers; the registry keeps null
            config = dataclasses.replace(config, publish=list(self.default_publish))
        supervisor = make(
            config,
            data_dir=self.data_dir,
            live_fps=self.live_fps,
            jpeg_quality=self.jpeg_quality,
            log_level=self.log_level,
        )
        supervisor.restarts = restarts
        self._supervisors[config.name] = supervisor
        supervisor.start()

    def _stop_worker(self, name: str) -> int:
        supervisor = self._supervisors.pop(name, None)
        if supervisor is None:
            return 0
        supervisor.stop()
        return supervisor.restarts

    # -- streams ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every stream's name."""
        return [config.name for config in self.registry.list()]

    def views(self) -> list[dict[str, Any]]:
        """Every stream's view (configuration, URI masked, and live status)."""
        return [self._view(config) for config in self.registry.list()]

    def get(self, name: str) -> dict[str, Any]:
        """One stream's view.

        Raises:
            NotFoundError: No such stream.
        """
        return self._view(self._config(name))

    def add(self, document: dict[str, Any]) -> dict[str, Any]:
        """Validate, store and start a new stream; returns its view.

        Raises:
            ConfigError: Invalid (the reason in one line).
            ConflictError: A stream of that name exists.
        """
        config = validate_stream(document, self.catalog)
        if config.calibration is not None:
            raise ConfigError("set a calibration with PATCH or the calibration editor once the stream runs")
        with self._lock:
            if not self.registry.add(config):
                raise ConflictError(f"a stream named {config.name!r} exists already")
            if config.enabled:
                self._start_worker(config)
        logger.info(
            "stream %s added (%s, pipeline %s)", config.name, public_view(config)["uri"], config.pipeline
        )
        return self._view(config)

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change a stream and restart its worker with the new configuration (the service and the
        other streams go on). ``calibration`` may be a calibration document (saved to a file
        first, see :meth:`save_calibration`) or None (back to the pipeline's own).

        Raises:
            NotFoundError: No such stream.
            ConfigError, CalibrationError: Invalid changes (nothing is changed).
        """
        unknown = sorted(set(changes) - set(MUTABLE_KEYS))
        if unknown:
            raise ConfigError(f"cannot change '{unknown[0]}' (changeable: {', '.join(MUTABLE_KEYS)})")
        with self._lock:
            current = self._config(name)
            document = {**current.to_dict(), **changes}
            calibration = changes.get("calibration")
            if isinstance(calibration, dict):
                document["calibration"] = None
                config = validate_stream(document, self.catalog)  # the rest first
                path = self._write_calibration(config, calibration)
                document["calibration"] = str(path)
            elif calibration is not None and "calibration" in changes:
                raise ConfigError("'calibration' must be a calibration object or null")
            config = validate_stream(document, self.catalog)
            self.registry.update(config)
            restarts = self._stop_worker(name)
            if config.enabled:
                self._start_worker(config, restarts)
        logger.info("stream %s changed (%s); its worker restarted", name, ", ".join(sorted(changes)))
        return self._view(config)

    def delete(self, name: str) -> None:
        """Stop a stream's worker and forget the stream (its outputs stay on disk).

        Raises:
            NotFoundError: No such stream.
        """
        with self._lock:
            self._config(name)
            self._stop_worker(name)
            self.registry.delete(name)
        logger.info("stream %s removed", name)

    def move(self, name: str, node: str) -> dict[str, Any]:
        """Move a running stream's worker to another cluster node; returns its view.

        Raises:
            NotFoundError: No such stream.
            ConflictError: Not on a cluster, or the stream is disabled.
            ConfigError: No alive node matches ``node``.
        """
        if self.placement is None:
            raise ConflictError("streams can be moved only on a cluster (vistream serve --cluster)")
        with self._lock:
            supervisor = self.supervisor(name)
            supervisor.move(self.placement.resolve_node(node))
        return self.get(name)

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes and the streams on each (one local node without a cluster)."""
        if self.placement is None:
            return [{"node": "local", "alive": True, "streams": self.names()}]
        nodes = self.placement.nodes()
        for node in nodes:
            node["streams"] = sorted(
                name for name, each in self._supervisors.items() if each.status().get("node") == node["node"]
            )
        return nodes

    def supervisor(self, name: str) -> Any:
        """The running worker's supervisor.

        Raises:
            NotFoundError: No such stream.
            ConflictError: The stream is disabled (no worker).
        """
        self._config(name)
        supervisor = self._supervisors.get(name)
        if supervisor is None:
            raise ConflictError(f"stream {name!r} is disabled; enable it first")
        return supervisor

    def supervisors(self) -> list[Any]:
        """The supervisors of the running streams (a replaced one is no longer among them)."""
        return list(self._supervisors.values())

    def events(self, name: str) -> list[dict[str, Any]]:
        """The stream's latest events, oldest first."""
        supervisor = self._supervisors.get(self._config(name).name)
        return list(supervisor.events) if supervisor is not None else []

    def _config(self, name: str) -> StreamConfig:
        config = self.registry.get(name)
        if config is None:
            raise NotFoundError(f"no stream named {name!r}")
        return config

    def _view(self, config: StreamConfig) -> dict[str, Any]:
        view = public_view(config)
        supervisor = self._supervisors.get(config.name)
        if supervisor is not None:
            view.update(supervisor.status())
        else:
            view.update(state="stopped", fps=0.0, pid=None, worker_restarts=0, last_error=None)
        return view

    # -- calibration ------------------------------------------------------------------------

    def calibration(self, name: str) -> dict[str, Any]:
        """The calibration the stream uses now: its own (saved from the editor) or its pipeline's.

        Returns:
            ``{"source": "stream" | "pipeline" | None, "calibration": document | None,
            "stages": [names of the stages that use one]}``.
        """
        config = self._config(name)
        spec = self.catalog.load(config.pipeline)
        document, source = None, None
        path = Path(config.calibration) if config.calibration else pipeline_calibration(spec)
        if path is not None:
            source = "stream" if config.calibration else "pipeline"
            try:
                document = Calibration.load(path).to_dict()
            except CalibrationError as error:
                logger.warning("stream %s: %s", name, error)
        return {"source": source, "calibration": document, "stages": calibration_stages(spec)}

    def preview_calibration(self, name: str, document: dict[str, Any]) -> dict[str, Any]:
        """Validate a calibration for the stream and return its grid in image pixels.

        Returns:
            ``{"segments": [[[x1, y1], [x2, y2]], ...] (grid lines, to be clipped to "zone"),
            "zone": [[x, y], ...], "rectangle": [[x, y] * 4], "cell_m": [x, y], "cells": [nx, ny],
            "label": str}``.

        Raises:
            CalibrationError: Invalid (in words: which points, what is wrong).
        """
        config = self._config(name)
        calibration = self._calibration_from(config, document)
        cells_x, cells_y = self._grid_cells(config)
        spacing = grid_spacing(calibration, cells_x, cells_y)
        segments = grid_segments(calibration, spacing)
        return {
            "segments": np.round(segments, 2).tolist(),
            "zone": np.round(calibration.zone, 2).tolist(),
            "rectangle": np.round(calibration.image_points, 2).tolist(),
            "cell_m": [round(spacing.cell_x_m, 3), round(spacing.cell_y_m, 3)],
            "cells": [spacing.cells_x, spacing.cells_y],
            "label": (
                f"cell {spacing.cell_x_m:.2f} x {spacing.cell_y_m:.2f} m, "
                f"rectangle {calibration.width_m:.2f} x {calibration.length_m:.2f} m"
            ),
        }

    def save_calibration(self, name: str, document: dict[str, Any]) -> dict[str, Any]:
        """Write the stream's calibration file and restart its worker with it (see :meth:`update`)."""
        return self.update(name, {"calibration": document})

    def _write_calibration(self, config: StreamConfig, document: dict[str, Any]) -> Path:
        spec = self.catalog.load(config.pipeline)
        if not calibration_stages(spec):
            raise ConfigError(f"pipeline {config.pipeline!r} has no stage that takes a calibration")
        calibration = self._calibration_from(config, document)
        folder = self.data_dir / "calibrations"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{config.name}.yaml"
        calibration.save(path)
        logger.info("stream %s: calibration written to %s", config.name, path)
        return path

    def _calibration_from(self, config: StreamConfig, document: dict[str, Any]) -> Calibration:
        if not isinstance(document, dict):
            raise CalibrationError("a calibration must be an object with points, width_m and length_m")
        supervisor = self._supervisors.get(config.name)
        status = supervisor.status() if supervisor is not None else {}
        size = document.get("image_size")
        if status.get("width"):
            known = {"width": status["width"], "height": status["height"]}
            if size is not None and size != known:
                raise CalibrationError(
                    f"the points were marked on a {_size(size)} image but stream {config.name!r} "
                    f"delivers {_size(known)}"
                )
            size = known
        if size is None:
            raise ConflictError(
                f"stream {config.name!r} has no frame yet; give image_size or wait until it runs"
            )
        full = {"camera": config.name, **document, "image_size": size}
        return Calibration.from_dict(full)

    def _grid_cells(self, config: StreamConfig) -> tuple[int | None, int | None]:
        """The cell counts of the pipeline's grid stage, so the preview looks like the stream."""
        for stage in self.catalog.load(config.pipeline).stages:
            if "cells_x" in stage.arguments or "cells_y" in stage.arguments:
                return stage.arguments.get("cells_x"), stage.arguments.get("cells_y")
        return None, None


def _size(size: Any) -> str:
    if isinstance(size, dict):
        return f"{size.get('width')}x{size.get('height')}"
    return repr(size)
