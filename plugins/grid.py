"""The `grid` stage: a calibration's road plane as a metric grid on every frame, so a person
can judge it by eye (the drawing itself lives in :mod:`engine.geometry.grid`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.checks import check_int, check_number, check_optional_int
from engine.errors import ConfigError, StageError
from engine.frame import Batch
from engine.geometry.calibration import Calibration
from engine.geometry.grid import (
    GRID_COLOR,
    RECTANGLE_COLOR,
    GridSpacing,
    blend_layer,
    draw_grid,
    grid_segments,
    grid_spacing,
    render_grid_layer,
)
from engine.stage import BaseStage, Context

__all__ = [
    "GRID_COLOR",
    "RECTANGLE_COLOR",
    "CalibrationGrid",
    "GridSpacing",
    "blend_layer",
    "draw_grid",
    "grid_segments",
    "grid_spacing",
    "render_grid_layer",
]

logger = logging.getLogger(__name__)


class CalibrationGrid(BaseStage):
    """Draws the calibrated road plane as a grid on every frame's canvas.

    Args:
        calibration: Calibration YAML file.
        cells_x: Grid cells across the rectangle's width (the other axis follows); default 2.
        cells_y: Grid cells along the rectangle's length, instead of ``cells_x``.
        color: BGR colour of the grid lines.
        thickness: Line width in pixels.
        opacity: 0 to 1.

    Raises:
        ConfigError: An argument is out of range.
        CalibrationError: (in ``open``) the calibration is invalid or its image size differs
            from a source's.
    """

    draws = True

    def __init__(
        self,
        *,
        calibration: Path,
        cells_x: int | None = None,
        cells_y: int | None = None,
        color: Sequence[int] = GRID_COLOR,
        thickness: int = 1,
        opacity: float = 0.6,
    ) -> None:
        if not isinstance(calibration, (str, Path)):
            raise ConfigError(f"grid: calibration must be a path, got {calibration!r}")
        if cells_x is not None and cells_y is not None:
            raise ConfigError("grid: set cells_x or cells_y, not both (the other follows the rectangle)")
        check_optional_int("grid: cells_x", cells_x, low=1)
        check_optional_int("grid: cells_y", cells_y, low=1)
        if (
            isinstance(color, str)
            or len(color) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
        ):
            raise ConfigError(f"grid: color must be three integers 0..255 (B, G, R), got {color!r}")
        check_int("grid: thickness", thickness, low=1)
        check_number("grid: opacity", opacity, low=0.0, high=1.0)
        self.calibration_path = Path(calibration)
        self.cells_x = cells_x
        self.cells_y = cells_y
        self.color = tuple(color)
        self.thickness = thickness
        self.opacity = float(opacity)
        self._calibration: Calibration | None = None
        self._layers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def open(self, context: Context) -> None:
        """Load the calibration and check it against every source's frame size."""
        calibration = Calibration.load(self.calibration_path)
        for source_id, info in context.sources.items():
            calibration.check_image_size(info.width, info.height, source_id)
        self._calibration = calibration
        self._layers.clear()

    def __call__(self, batch: Batch) -> Batch:
        """Blend the (cached) grid layer onto each frame's canvas."""
        calibration = self._calibration
        if calibration is None:
            raise StageError("grid: __call__ before open()")
        for frame in batch:
            canvas = frame.draw_target()
            if not canvas.flags.c_contiguous:  # drawn on in place through a flat view below
                canvas = frame.canvas = np.ascontiguousarray(canvas)
            height, width = canvas.shape[:2]
            cached = self._layers.get((width, height))
            if cached is None:
                calibration.check_image_size(width, height, frame.source_id)
                layer, alpha = render_grid_layer(
                    calibration,
                    (width, height),
                    cells_x=self.cells_x,
                    cells_y=self.cells_y,
                    color=self.color,
                    thickness=self.thickness,
                )
                # Only the painted pixels, pre-weighted: a frame costs one gather and one scatter.
                index = np.flatnonzero(alpha > 0)
                weight = (alpha.reshape(-1)[index] * self.opacity)[:, None].astype(np.float32)
                cached = (index, weight, layer.reshape(-1, 3)[index].astype(np.float32) * weight + 0.5)
                self._layers[(width, height)] = cached
            index, weight, painted = cached
            pixels = canvas.reshape(-1, 3)  # a view: the canvas is contiguous
            pixels[index] = (pixels[index] * (1.0 - weight) + painted).astype(np.uint8)
        return batch

    def close(self) -> None:
        """Drop the cached layers."""
        self._layers.clear()
